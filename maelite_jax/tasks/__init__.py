"""Objective plug-ins of the one training loop: a narrow contract (`base.Objective`) and a
registry keyed by `config.objective` (`registry.build`)."""
