"""``python -m nvshell``: the same entry point as the ``nvshell`` command."""

from nvshell.main import main

raise SystemExit(main())
