from ftstudio.cli import main

raise SystemExit(main())
