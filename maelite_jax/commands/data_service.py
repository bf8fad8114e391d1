"""tf.data service servers for `config.data.service_address` (docs/input-pipeline.md): run the
dispatcher on one machine and a worker on each CPU machine, then train with
--data_service=DISPATCHER_HOST:PORT.

  python scripts/data_service.py dispatcher --port 5050 \
      --workers cpu1.example:5051,cpu2.example:5051
  python scripts/data_service.py worker --dispatcher dispatcher.example:5050 \
      --address cpu1.example:5051          # on cpu1 (listens on 5051)

The dispatcher must list every worker as it names itself (--address): each epoch is split
statically over them, so the batches are exactly those of a local pipeline. Workers need the
same TensorFlow version as the trainer and the dataset's files at the same paths.
"""

from absl import flags, logging

from maelite_jax.utils import cli

_PORT = flags.DEFINE_integer("port", 5050, "dispatcher: the port it listens on")
_WORKERS = flags.DEFINE_list("workers", [], "dispatcher: every worker's HOST:PORT")
_WORK_DIR = flags.DEFINE_string("work_dir", None, "dispatcher: a folder that lets a restarted "
                                "dispatcher recover its jobs (optional)")
_DISPATCHER = flags.DEFINE_string("dispatcher", None, "worker: the dispatcher's HOST:PORT")
_ADDRESS = flags.DEFINE_string("address", None, "worker: HOST:PORT others reach it at (one of "
                               "the dispatcher's --workers); it listens on that port")


def _role(argv) -> str:
  """The role, with the flags it needs checked (also what --dry_run checks)."""
  from maelite_jax.utils.errors import UserError
  roles = ("dispatcher", "worker")
  if len(argv) != 2 or argv[1] not in roles:
    raise UserError(f"expected one role, {' or '.join(roles)}, got {argv[1:]}. Fix: e.g. "
                    "`data_service.py dispatcher --port 5050 --workers h1:5051,h2:5051`.")
  if argv[1] == "dispatcher" and not _WORKERS.value:
    raise UserError("the dispatcher needs --workers HOST:PORT,... (every worker, as each "
                    "names itself with --address). Fix: list them.")
  if argv[1] == "worker" and (not _DISPATCHER.value or not _ADDRESS.value
                              or ":" not in _ADDRESS.value):
    raise UserError("a worker needs --dispatcher HOST:PORT and --address HOST:PORT (its own, "
                    "as listed in the dispatcher's --workers). Fix: pass both.")
  return argv[1]


def _main(argv):
  from maelite_jax.data import service
  if _role(argv) == "dispatcher":
    server = service.start_dispatcher(_PORT.value, _WORKERS.value, _WORK_DIR.value)
    logging.warning("tf.data dispatcher on port %d for workers %s", _PORT.value, _WORKERS.value)
  else:
    server = service.start_worker(_DISPATCHER.value, _ADDRESS.value)
    logging.warning("tf.data worker %s of dispatcher %s", _ADDRESS.value, _DISPATCHER.value)
  server.join()


def main():
  cli.run(_main, verbosity=logging.WARNING, check_args=_role)


if __name__ == "__main__":
  main()
