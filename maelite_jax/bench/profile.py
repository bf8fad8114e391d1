"""Where a step's time goes, from a jax.profiler trace (the benchmark's --profile).

`summarize(xplane, steps, hlo_text)` reads the trace's .xplane.pb with jax.profiler.ProfileData
(no TensorFlow or TensorBoard needed) and sums the time of the step program's ops by category:

  matmul       dots and the kernels XLA builds around them (cuBLAS/cuBLASLt custom calls, Triton
               GEMM fusions, XLA:CPU's dot fusions), except the attention core's
  attention    the attention core: QK^T, softmax and AV of the einsum path (ops named under a
               block's attn/ but not its qkv/proj Dense layers), or cuDNN's fused kernel
  optimizer    the grad norm, AdamW, the lr scale and the non-finite guard (train/step.py names
               them `optimizer`), and MoCo-v3's momentum update (`post_update`)
  elementwise  the other fusions: LayerNorm, GELU, residual adds, casts, loss, masking gathers
  copy         copies and transposes XLA could not fuse away
  collective   all-reduce and friends (several devices)
  other        the rest (custom calls, infeed, ...)
  idle         step wall time (the benchmark's step annotations) minus the time at least one op
               of the step ran: launch gaps, host work, waiting on the host

Each op is identified by its HLO instruction name; `hlo_text` (the compiled program's
`as_text()`) gives its opcode, fusion body and JAX name stack (metadata op_name), which is what
the categories are read from. Without it, names alone are used (coarser). On a CPU the ops of
one step overlap on several threads, so the categories' sum can exceed the wall time; on a GPU
the ops of one stream do not overlap.
"""

import collections
import re

CATEGORIES = ("matmul", "attention", "optimizer", "elementwise", "copy", "collective", "other")
_HEADER = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_INSTR = re.compile(r"^\s+(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(?:\([^=]*?\)|\S+)\s+([a-z][\w\-]*)\(")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_TARGET = re.compile(r'custom_call_target="([^"]+)"')
_OP_NAME = re.compile(r'op_name="([^"]+)"')
_COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


def parse_hlo(text: str) -> dict:
  """{instruction name: dict(opcode, target, op_name, body)} of an HLO module's text; body =
  the opcodes (and custom-call targets) of the computation a fusion calls, recursively."""
  comps, instrs, current = collections.defaultdict(set), {}, None
  calls = {}
  for line in (text or "").splitlines():
    if not line.startswith(" "):
      m = _HEADER.match(line)
      current = m.group(1) if m else None
      continue
    m = _INSTR.match(line)
    if not m:
      continue
    name, opcode = m.groups()
    target = _TARGET.search(line)
    op_name = _OP_NAME.search(line)
    callee = _CALLS.search(line)
    instrs[name] = dict(opcode=opcode, target=target.group(1) if target else "",
                        op_name=op_name.group(1) if op_name else "",
                        calls=callee.group(1) if callee else "")
    if current:
      comps[current].add(opcode)
      if target:
        comps[current].add(target.group(1))
      if callee:
        calls.setdefault(current, set()).add(callee.group(1))

  def body(comp, seen=()):
    out = set(comps.get(comp, ()))
    for sub in calls.get(comp, ()):
      if sub not in seen:
        out |= body(sub, seen + (comp,))
    return out

  for info in instrs.values():
    info["body"] = body(info["calls"]) if info["calls"] else set()
  return instrs


def _is_attention_core(op_name: str) -> bool:
  return "/attn/" in op_name and not re.search(r"/attn/(qkv|proj)/", op_name)


def categorize(name: str, info: dict | None) -> str:
  """The category (CATEGORIES) of one HLO op, by what it is and where JAX says it came from."""
  info = info or {}
  opcode, target, op_name = info.get("opcode", ""), info.get("target", ""), info.get("op_name", "")
  body = info.get("body", set())
  things = {opcode, target} | body
  text = " ".join(str(t) for t in things).lower() + " " + name.lower()
  if "/optimizer/" in op_name or "/post_update/" in op_name:
    return "optimizer"
  if any(c in text for c in _COLLECTIVES):
    return "collective"
  if "fmha" in text or "cudnn$" in text or "flash" in text:
    return "attention"
  is_dot = ("dot" in things or "convolution" in things or "gemm" in text or "matmul" in text
            or "__cublas" in text)
  if _is_attention_core(op_name) and not op_name.endswith("/attn/reshape"):
    return "attention"
  if is_dot or (not info and re.match(r"(dot|gemm|cublas|ynn_fusion|onednn)", name)):
    return "matmul"
  if opcode in ("copy", "transpose") or name.startswith(("copy", "transpose")) or (
      body and body <= {"copy", "transpose", "bitcast", "parameter"}):
    return "copy"
  if opcode == "fusion" or "fusion" in name:
    return "elementwise"
  return "other"


def _union_ns(intervals) -> float:
  total, end = 0.0, None
  for start, stop in sorted(intervals):
    if end is None or start > end:
      total += stop - start
      end = stop
    elif stop > end:
      total += stop - end
      end = stop
  return total


def _op_events(pd, module: str | None):
  """[(hlo op name, module, start_ns, duration_ns)] of device ops: a GPU plane's 'XLA Ops'
  line when there is one, else every event that carries an hlo_op stat (CPU threads, GPU
  kernel lines)."""
  device_planes = [p for p in pd.planes if p.name.startswith("/device:")]
  planes = device_planes or [p for p in pd.planes if p.name.startswith("/host:CPU")]
  out = []
  for plane in planes:
    lines = list(plane.lines)
    ops_lines = [ln for ln in lines if ln.name == "XLA Ops"]
    for line in ops_lines or lines:
      for e in line.events:
        if e.name.startswith("end: "):
          continue
        stats = dict(e.stats)
        if not ops_lines and "hlo_op" not in stats:
          continue
        mod = str(stats.get("hlo_module", ""))
        if module and mod and not mod.startswith(module):
          continue
        out.append((str(stats.get("hlo_op", e.name)), mod, e.start_ns, e.duration_ns))
  return out


def summarize(xplane_path: str, steps: int, hlo_text: str = "", module: str | None = None,
              top: int = 15) -> dict:
  """Per-step milliseconds by category, the busiest ops, and idle time (see module doc).

  module: keep only ops of HLO modules whose name starts with this (default: the module with
  the most op time, i.e. the train step)."""
  import jax
  pd = jax.profiler.ProfileData.from_file(xplane_path)
  events = _op_events(pd, module)
  if not module and events:
    per_module = collections.Counter()
    for _, mod, _, dur in events:
      per_module[mod] += dur
    module = per_module.most_common(1)[0][0]
    events = [e for e in events if e[1] == module]
  walls = [e.duration_ns for p in pd.planes for ln in p.lines for e in ln.events
           if e.name == "train" and "step_num" in dict(e.stats)]
  instrs = parse_hlo(hlo_text)
  by_cat, by_op = collections.Counter(), collections.Counter()
  for name, _, _, dur in events:
    by_cat[categorize(name, instrs.get(name))] += dur
    by_op[name] += dur
  steps = max(steps, 1)
  wall = sum(walls) / len(walls) if walls else None
  busy = _union_ns([(s, s + d) for _, _, s, d in events]) / steps
  ms = lambda ns: round(ns / 1e6, 4)
  per_step = {c: ms(by_cat[c] / steps) for c in CATEGORIES}
  if wall is not None:
    per_step["idle"] = ms(max(wall - busy, 0.0))
  tops = []
  for name, dur in by_op.most_common(top):
    info = instrs.get(name, {})
    tops.append(dict(op=name, category=categorize(name, info or None),
                     ms_per_step=ms(dur / steps), op_name=info.get("op_name", "")[-120:]))
  return dict(module=module, steps=steps, ops_seen=len(events),
              wall_ms_per_step=ms(wall) if wall is not None else None,
              busy_ms_per_step=ms(busy), per_step_ms=per_step, top_ops=tops,
              hlo_matched=bool(instrs) and sum(n in instrs for n, *_ in events) / max(
                  len(events), 1))
