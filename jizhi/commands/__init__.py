"""One module per `jizhi` subcommand; each exposes `register(subparsers)` and sets `func` on its parser."""
