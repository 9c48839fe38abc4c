"""`python -m messageai` is the `messageai` command."""

from messageai.cli import main

raise SystemExit(main())
