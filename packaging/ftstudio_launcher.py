"""The bundle's entry point: the same `ftstudio` command as `pip install` gives (GUI by default, verbs, --self-test)."""
import sys

from ftstudio.entry import main

if __name__ == "__main__":
    sys.exit(main())
