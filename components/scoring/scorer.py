"""The fast student scorer: IFD and r-IFD for many candidates at once, exactly as the reference.

Both scores of a candidate need four *passes* (one forward sequence each, scored on its target tokens):

    output_given_instruction   start + P(x) + y    target y   -> L(y | P(x))
    output                     start + y           target y   -> L(y)
    instruction_given_output   start + R(y) + x    target x   -> L(x | R(y))
    instruction                start + x           target x   -> L(x)

Tokenization follows the reference (Cherry LLM ``get_perplexity_and_embedding_part_text``): the
whole text is tokenized once and the first target token is at the token count of the text before
the target, so merges at the prompt/target boundary are treated the same. ``start`` is a start
token prepended when the tokenizer adds no BOS itself (a 1-token text alone would otherwise have
nothing to predict from); it is never a target. A conditioned pass is cut at ``max_length``
tokens; when that cuts into the target, the alone pass keeps the same number of target tokens.
A conditioned pass whose target is cut away entirely gives no score and the reason ``truncated``.

``L`` is the mean cross-entropy over target positions ``p`` of ``-log softmax(W h[p-1])[ids[p]]``
— what HF's ``outputs.loss`` computes with labels masked to the target. What makes it fast:

* only the passes of the scores a candidate asks for are run, and none whose loss an earlier
  phase already computed (``ScoringCandidate.scores`` / ``known``; see ``ScoringRun``);
* identical passes are computed once (key: token ids + target start) — e.g. the alone pass of a
  response shared by several candidates, or a teacher fallback identical to ``ori``;
* the fixed text every prompt starts with (system sentence, reverse-prompt preamble) is run once
  per run; its keys and values are reused from a cache by every pass that starts with it;
* passes are sorted by length and batched under a token budget, at most 10 % padding per row;
* the decoder runs once per batch and the vocabulary projection ``W`` (49k x 576 for the
  embedded model) is applied only at the hidden states that predict target tokens, in chunks,
  with the cross-entropy in fp32; everything runs under ``torch.inference_mode``.

And what keeps it equal to the per-sample HF loss (within ~5e-6 on a loss in fp32, 1e-4 on the
ratios): products of at least ``MIN_GEMM_ROWS`` rows (the kernel HF's full-sequence product
uses), passes shorter than that run alone as HF runs them, and a candidate whose ratio is large
enough for that noise to matter after ``exp`` is re-run pass by pass (``PRECISE_ABOVE``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from rtune.components.scoring.config import ScoringConfig
from rtune.components.scoring.formulas import Scores
from rtune.components.scoring.passes import (  # noqa: F401 - re-exported for callers
    EMPTY_INSTRUCTION,
    EMPTY_OUTPUT,
    ENDOFTEXT,
    MAX_PADDING,
    TOO_SHORT,
    TRUNCATED,
    CandidatePlan,
    PassBuilder,
    ScoringCandidate,
    TokenPass,
    batch_by_budget,
    plan_candidate,
    resolve_start_ids,
)
from rtune.components.scoring.scoring_run import (  # noqa: F401 - re-exported for callers
    PRECISE_ABOVE,
    ScoringRun,
    ScoringStats,
    needs_exact_passes,
)
from rtune.components.scoring.templates import (
    get_template,
    render_prompt,
    render_reverse_prompt,
)

log = logging.getLogger(__name__)

LOGIT_CHUNK_ELEMENTS = 1 << 22  # logits materialised at once (16 MiB in fp32)
# BLAS picks another sgemm kernel (another summation order) for products of fewer rows; keeping
# every product at >= 16 rows, as the per-sample pass of a >= 16-token text has, keeps the fast
# path's logits bit-identical to HF's there. Shorter passes run alone, like the per-sample pass.
MIN_GEMM_ROWS = 16
SENTINEL = "\u2063"  # marks where the variable text starts when finding a template's fixed prefix


class StudentScorer:
    """Scores candidates with a loaded student (see the module docstring for the maths)."""

    def __init__(self, model: Any, tokenizer: Any, config: ScoringConfig) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.template = get_template(config.template)
        self.start_ids = resolve_start_ids(tokenizer, config.start_token)
        self.builder = PassBuilder(tokenizer, self.start_ids, config.max_length)
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else 0)
        self.decoder = model.base_model
        self.head = model.get_output_embeddings()
        # where inputs go (a student spread over GPUs by device_map has its embeddings on the first)
        self.device = model.get_input_embeddings().weight.device
        self.softcap = getattr(model.config, "final_logit_softcapping", None)
        self._check_head()
        self.prefixes = self._template_prefixes()
        self._prefix_kv: dict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self.share_prefixes = self._check_prefix_sharing()
        self.precise_above = PRECISE_ABOVE  # tests lower it to make the rule fire on a tiny model

    @classmethod
    def load(cls, config: ScoringConfig) -> StudentScorer:
        """Resolve ``config.model`` ('default' | folder | s3://) and load it for scoring."""
        from rtune.components.common.models import load_causal_lm, load_tokenizer, resolve_model

        path = resolve_model(config.model)
        return cls(load_causal_lm(path, config.dtype, "auto"), load_tokenizer(path), config)

    def plan(self, candidate: ScoringCandidate) -> CandidatePlan:
        return plan_candidate(self.builder, self.template, candidate, self.config.reverse_prompt)

    def score(
        self,
        candidates: Sequence[ScoringCandidate],
        on_scored: Callable[[str, Scores], None] | None = None,
        progress: bool = True,
    ) -> tuple[dict[str, Scores], ScoringStats]:
        """Scores of every candidate by key; ``on_scored(key, scores)`` fires as each completes
        (after the batch holding its last pass), so a caller can checkpoint as it goes."""
        began = time.perf_counter()
        plans = [self.plan(candidate) for candidate in candidates]
        run = ScoringRun(plans, on_scored, self.exact_loss, self.precise_above)
        run.stats.tokens = sum(len(p.ids) for p in run.unique)
        run.finish_unscored()
        with _progress(run.stats.tokens, progress) as bar:
            for shared, batch in self._batches(run.unique):
                passes = [run.unique[i] for i in batch]
                run.count_batch(
                    passes, shared, new_prefix=passes[0].ids[:shared] not in self._prefix_kv
                )
                run.record(batch, self.forward_losses(passes, shared))
                bar.update(sum(len(p.ids) for p in passes))
        run.stats.seconds = time.perf_counter() - began
        return run.results, run.stats

    def forward_losses(self, passes: Sequence[TokenPass], shared: int = 0) -> list[float]:
        """Mean target cross-entropy of each pass, from one padded forward of the decoder.

        With ``shared`` > 0 every pass starts with the same ``shared`` tokens: their keys and
        values come from a cache (computed once per run) and only the rest is run.
        """
        with torch.inference_mode():
            ids = _pad(passes, self.pad_id).to(self.device)
            cache = self._prefix_cache(passes[0].ids[:shared], len(passes)) if shared else None
            hidden = self.decoder(  # no attention mask: see _pad
                input_ids=ids[:, shared:],
                past_key_values=cache,
                use_cache=cache is not None,
            ).last_hidden_state
            if len(passes) == 1 and not shared and len(passes[0].ids) < MIN_GEMM_ROWS:
                return [self._short_pass_loss(passes[0], hidden[0])]
            rows, cols, targets = _target_index(passes)
            picked = hidden[rows.to(hidden.device), (cols - shared).to(hidden.device)]
            token_losses = self._target_cross_entropy(picked, targets).cpu()
            sums = torch.zeros(len(passes), dtype=torch.float64)
            sums.index_add_(0, rows, token_losses.double())
            counts = torch.tensor([p.n_targets for p in passes], dtype=torch.float64)
            return (sums / counts).tolist()

    def exact_loss(self, token_pass: TokenPass) -> float:
        """One pass alone, unpadded, nothing cached: the per-sample computation."""
        return self.forward_losses([token_pass])[0]

    def shared_length(self, token_pass: TokenPass) -> int:
        """How many leading tokens ``token_pass`` shares with a template's fixed prefix (0 if too
        few); never past the position predicting the first target, whose state must be run."""
        if not self.share_prefixes:
            return 0
        best = max((_common_length(token_pass.ids, prefix) for prefix in self.prefixes), default=0)
        best = min(best, token_pass.start - 1, len(token_pass.ids) - MIN_GEMM_ROWS)
        return best if best >= MIN_GEMM_ROWS else 0

    def _batches(self, unique: Sequence[TokenPass]) -> list[tuple[int, list[int]]]:
        """(shared prefix length, pass indices): passes grouped by shared prefix, then batched
        by length under the token budget (the shared part is not run, so it is not counted)."""
        groups: dict[tuple[int, ...], list[int]] = {}
        batches: list[tuple[int, list[int]]] = []
        for index, token_pass in enumerate(unique):
            if len(token_pass.ids) < MIN_GEMM_ROWS:
                batches.append((0, [index]))
            else:
                groups.setdefault(token_pass.ids[: self.shared_length(token_pass)], []).append(
                    index
                )
        for prefix, members in groups.items():
            lengths = [len(unique[i].ids) - len(prefix) for i in members]
            for batch in batch_by_budget(lengths, self.config.batch_tokens):
                batches.append((len(prefix), [members[i] for i in batch]))
        return batches

    def _prefix_cache(self, prefix: tuple[int, ...], rows: int) -> Any:
        """A KV cache holding ``prefix`` for ``rows`` rows (the prefix is run once per run)."""
        from transformers import DynamicCache

        if prefix not in self._prefix_kv:
            out = self.decoder(input_ids=torch.tensor([prefix], device=self.device), use_cache=True)
            self._prefix_kv[prefix] = [(lay.keys, lay.values) for lay in out.past_key_values.layers]
        data = [
            (k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1))
            for k, v in self._prefix_kv[prefix]
        ]
        return DynamicCache(data, config=self.model.config)

    def _template_prefixes(self) -> list[tuple[int, ...]]:
        """Token ids of the fixed text that starts every prompt and every reverse prompt."""
        texts = [
            render_prompt(self.template, SENTINEL, "", self.tokenizer),
            render_reverse_prompt(
                self.template, self.config.reverse_prompt, SENTINEL, self.tokenizer
            ),
        ]
        return [tuple(self.builder.encode(text.split(SENTINEL)[0])) for text in texts]

    def _target_cross_entropy(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``-log softmax(W h)[target]`` per row (fp32), projecting a chunk of rows at a time.

        A chunk shorter than ``MIN_GEMM_ROWS`` is widened with rows already done (or copies of
        its first row) so that every row goes through the same sgemm kernel.
        """
        vocab = self.head.weight.shape[0]
        chunk = max(MIN_GEMM_ROWS, LOGIT_CHUNK_ELEMENTS // vocab)
        out = torch.empty(len(targets), dtype=torch.float32, device=self.head.weight.device)
        targets = targets.to(out.device)
        for begin in range(0, len(targets), chunk):
            end = min(begin + chunk, len(targets))
            first = min(begin, max(0, end - MIN_GEMM_ROWS))
            block = hidden[first:end]
            if len(block) < MIN_GEMM_ROWS:
                block = torch.cat([block, block[:1].expand(MIN_GEMM_ROWS - len(block), -1)])
            logits = self._logits(block)[begin - first : end - first].float()
            out[begin:end] = torch.nn.functional.cross_entropy(
                logits, targets[begin:end], reduction="none"
            )
        return out

    def _short_pass_loss(self, token_pass: TokenPass, hidden: torch.Tensor) -> float:
        """A pass shorter than ``MIN_GEMM_ROWS``: every position is projected, as HF does."""
        logits = self._logits(hidden).float()[token_pass.start - 1 : len(token_pass.ids) - 1]
        targets = torch.tensor(token_pass.ids[token_pass.start :], dtype=torch.long)
        token_losses = torch.nn.functional.cross_entropy(
            logits, targets.to(logits.device), reduction="none"
        )
        return float(token_losses.double().mean())

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.head(hidden.to(self.head.weight.device))
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def _check_prefix_sharing(self) -> bool:
        """Use cached prefixes only if they reproduce the plain forward (models with sliding
        windows or unusual caches fall back to running every token)."""
        ids = self.builder.encode(
            "Check that a cached prefix gives the same losses as a full run of every token, "
            "here and there. " * 3
        )
        probe = TokenPass(tuple(ids), len(ids) // 2)
        shared = len(ids) // 2 - 1
        try:
            plain = self.forward_losses([probe, probe])
            cached = self.forward_losses([probe, probe], shared)
        except (TypeError, ValueError, AttributeError, RuntimeError) as err:
            log.info("prefix sharing disabled for %s: %s", type(self.model).__name__, err)
            return False
        agree = all(abs(a - b) < 1e-5 for a, b in zip(plain, cached, strict=True))
        if not agree:
            log.info("prefix sharing disabled for %s: losses differ", type(self.model).__name__)
        return agree

    def _check_head(self) -> None:
        """Refuse models whose logits are not ``lm_head(last hidden state)`` (+ softcap): the
        fast path would silently disagree with ``outputs.loss`` for them."""
        ids = torch.tensor([self.builder.encode("Check the output head.")[:8]], device=self.device)
        with torch.inference_mode():
            full = self.model(input_ids=ids, use_cache=False).logits[0].float()
            try:
                hidden = self.decoder(input_ids=ids, use_cache=False).last_hidden_state[0]
            except (AttributeError, TypeError) as err:
                raise ValueError(
                    f"{type(self.model).__name__}: no decoder returning hidden states ({err}); "
                    "the fast scorer does not support this architecture"
                ) from err
            fast = self._logits(hidden).float()
        if not torch.allclose(full, fast, atol=1e-3, rtol=1e-3):
            raise ValueError(
                f"{type(self.model).__name__}: logits are not lm_head(last hidden state); "
                "the fast scorer does not support this architecture"
            )


def _common_length(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token sequences."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _pad(passes: Sequence[TokenPass], pad_id: int) -> torch.Tensor:
    """Right-padded ids. They need no attention mask: under causal attention a position sees only
    the positions before it, and right padding puts every pad after every real token of its row,
    so a real token's state is the same with or without a mask (bit for bit on the embedded
    model) and the states at pads are never read. Without a mask the decoder takes the causal
    kernel path, ~8 % faster than the masked one on a padded batch (benchmarked on this CPU)."""
    width = max(len(p.ids) for p in passes)
    ids = torch.full((len(passes), width), pad_id, dtype=torch.long)
    for row, p in enumerate(passes):
        ids[row, : len(p.ids)] = torch.tensor(p.ids, dtype=torch.long)
    return ids


def _target_index(passes: Sequence[TokenPass]) -> tuple[torch.Tensor, ...]:
    """(row, column) of every hidden state that predicts a target token (column = position - 1)
    and the target ids; the row also says which pass a token loss belongs to."""
    rows: list[int] = []
    cols: list[int] = []
    targets: list[int] = []
    for row, p in enumerate(passes):
        rows.extend([row] * p.n_targets)
        cols.extend(range(p.start - 1, len(p.ids) - 1))
        targets.extend(p.ids[p.start :])
    return tuple(torch.tensor(values, dtype=torch.long) for values in (rows, cols, targets))


def _progress(total_tokens: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(
        total=total_tokens,
        unit="tok",
        unit_scale=True,
        desc="scoring",
        disable=not enabled,
        mininterval=1.0,
        dynamic_ncols=True,
    )
