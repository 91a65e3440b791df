from cursor_grpc.cli import main

raise SystemExit(main())
