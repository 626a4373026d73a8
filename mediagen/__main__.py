from mediagen.cli import main

raise SystemExit(main())
