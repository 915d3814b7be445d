from explorank.cli import main

raise SystemExit(main())
