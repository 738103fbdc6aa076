"""The proving grounds: studies that train methods over seeds, measure each student as its teacher's draft, and
judge the papers' claims (docs/results.md). plan: worlds, methods, plans and their jobs; jobs: training one job
and the worker pool; measure: a student's quality and draft figures, a pair's forward costs; claims: the claims
and their verdicts; stats: intervals and Welch's test; report and plots: report.md and its figures; demo: the
built-in study (`specdistill demo`); grids: its image-token study."""
