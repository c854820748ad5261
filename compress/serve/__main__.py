from compress.serve.server import main

raise SystemExit(main())
