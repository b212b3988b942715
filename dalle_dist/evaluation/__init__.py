"""Evaluation: judges and scores for generated images."""

from .shapes_judge import JudgeResult, judge_shape, judge_shapes, matches, matches_all

__all__ = ["JudgeResult", "judge_shape", "judge_shapes", "matches", "matches_all"]
