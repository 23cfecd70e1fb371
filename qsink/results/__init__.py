"""What is made from records: leaderboards with Spearman tables, studies, reports and their plots."""

from qsink.results.leaderboard import flatten, leaderboard

__all__ = ["flatten", "leaderboard"]
