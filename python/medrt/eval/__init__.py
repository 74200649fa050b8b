"""Medical QA evaluation through the runtime (``medrt eval``): task readers, lm-eval-style
log-likelihood scoring and generative scoring through the engine, reports and paired
comparisons. docs/evaluation.md describes the tasks, prompts, answer patterns and formats."""

from medrt.eval.formats import CorpusError, Record, load
from medrt.eval.generate import GenerateConfig
from medrt.eval.report import compare, markdown
from medrt.eval.run import evaluate
from medrt.eval.tasks import Question, load_task

__all__ = ["CorpusError", "GenerateConfig", "Question", "Record", "compare", "evaluate", "load",
           "load_task", "markdown"]
