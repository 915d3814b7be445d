from explorank.engine.cli import main

raise SystemExit(main())
