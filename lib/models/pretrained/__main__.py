"""python -m lib.models.pretrained [--profile full|quick] [--only clip,gan,...]: retrain the shipped
mini-world models (:mod:`lib.models.pretrained.train`)."""

from lib.models.pretrained.train import main

raise SystemExit(main())
