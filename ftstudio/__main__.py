from ftstudio.entry import main

raise SystemExit(main())
