"""``python -m vmambair <command> [args]``: the same commands as the console scripts
(``vmambair-train``, ...) and the repository's thin CLIs (``train.py``, ``scripts/restore.py``, ...)."""
import importlib
import sys

# command -> (module, function); imported only when asked for, so `--help` stays quick.
COMMANDS = {
    "train": ("vmambair.apps.train", "train_main"),
    "test": ("vmambair.apps.test", "run_benchmark"),
    "restore": ("vmambair.apps.restore", "restore_main"),
    "export": ("vmambair.apps.export", "export_main"),
    "convert-original": ("vmambair.apps.convert_original", "main"),
    "stats": ("vmambair.apps.model_stats", "main"),
    "study": ("vmambair.apps.study", "study_main"),
}


def main(argv=None) -> int:
    """Dispatch ``argv[0]`` to its app's main with the remaining arguments; 2 on a usage error."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        if argv and argv[0] not in ("-h", "--help"):
            print(f"error: unknown command {argv[0]!r}.", file=sys.stderr)
        print("usage: python -m vmambair {" + ",".join(COMMANDS) + "} [args]  (each command takes --help)",
              file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module, func = COMMANDS[argv[0]]
    return getattr(importlib.import_module(module), func)(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
