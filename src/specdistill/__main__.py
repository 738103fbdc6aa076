"""`python -m specdistill ...` (and `accelerate launch -m specdistill distill CONFIG`)."""

import sys

from .cli import main

sys.exit(main())
