"""The drift statistics, each a test with a p-value and an effect size, on numpy / scipy / scikit-learn (no
monitoring library: Evidently's text descriptors download nltk data at run time, alibi-detect is BSL-licensed and
pins old numpy; these are short enough to own and test).

- mmd: maximum mean discrepancy of two embedding sets (Gaussian kernel, median-distance bandwidth, unbiased
  estimate) with a permutation test (Gretton et al. 2012; Rabanser et al. 2019 found it the most reliable
  detector on reduced representations);
- classifier: a two-sample test by classification (Lopez-Paz & Oquab 2017): TF-IDF word n-grams + logistic
  regression, out-of-fold ROC AUC, permutation p-value; it also names the n-grams and prompts that differ most;
- length: population stability index over the reference's length deciles, with a two-sample KS test;
- oov: the share of words not in the training vocabulary, compared with the same share on the held-out set
  (which is what "normal" looks like for text the model never trained on), by a two-proportion z-test;
- loss: the tuned model's per-prompt loss, new vs held-out (Mann-Whitney U).
Holm's correction across tests; a test flags drift only when its adjusted p is below alpha *and* its effect is at
least the minimum that matters, so a huge sample does not flag a trivial shift."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import numpy as np

WORD = re.compile(r"[a-z0-9']+")


@dataclass
class Signal:
    name: str
    statistic: float
    p_value: float
    effect: float  # on the scale `min_effect` is stated in
    min_effect: float
    detail: dict = field(default_factory=dict)
    p_adjusted: float | None = None
    drifted: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def _permutation_p(observed: float, null: list[float]) -> float:
    """(1 + #null >= observed) / (1 + #null): never 0, exact for the permutations drawn."""
    return (1 + sum(v >= observed for v in null)) / (1 + len(null))


def mmd(reference: np.ndarray, current: np.ndarray, permutations: int = 200, seed: int = 0,
        min_effect: float = 0.01) -> Signal:
    """Unbiased MMD^2 with a Gaussian kernel (bandwidth: the median pairwise distance of the pooled sample)."""
    pooled = np.concatenate([reference, current]).astype(np.float64)
    squared = np.maximum((pooled ** 2).sum(1)[:, None] + (pooled ** 2).sum(1)[None, :] - 2 * pooled @ pooled.T, 0)
    upper = squared[np.triu_indices(len(pooled), 1)]
    bandwidth = np.median(upper[upper > 0]) if (upper > 0).any() else 1.0
    kernel = np.exp(-squared / bandwidth)
    n = len(reference)

    def statistic(index: np.ndarray) -> float:
        a, b = index[:n], index[n:]
        kaa, kbb, kab = kernel[np.ix_(a, a)], kernel[np.ix_(b, b)], kernel[np.ix_(a, b)]
        m1, m2 = len(a), len(b)
        return ((kaa.sum() - np.trace(kaa)) / (m1 * (m1 - 1)) + (kbb.sum() - np.trace(kbb)) / (m2 * (m2 - 1))
                - 2 * kab.mean())

    rng = np.random.default_rng(seed)
    order = np.arange(len(pooled))
    observed = statistic(order)
    null = [statistic(rng.permutation(order)) for _ in range(permutations)]
    return Signal("mmd", float(observed), _permutation_p(observed, null), float(max(observed, 0.0)), min_effect,
                  {"bandwidth": float(bandwidth), "permutations": permutations})


def classifier(reference: list[str], current: list[str], permutations: int = 100, seed: int = 0,
               min_effect: float = 0.05, top: int = 8, folds: int = 5) -> Signal:
    """Out-of-fold AUC of telling current from reference; effect = AUC - 0.5."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    texts = list(reference) + list(current)
    y = np.array([0] * len(reference) + [1] * len(current))
    features = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True).fit(texts)
    x = features.transform(texts)
    splits = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    model = LogisticRegression(max_iter=1000, C=1.0)

    def auc(labels: np.ndarray) -> float:
        scores = cross_val_predict(model, x, labels, cv=splits, method="decision_function")
        return float(roc_auc_score(labels, scores)), scores

    observed, scores = auc(y)
    rng = np.random.default_rng(seed)
    null = [auc(rng.permutation(y))[0] for _ in range(permutations)]
    fitted = model.fit(x, y)
    names = features.get_feature_names_out()
    weights = fitted.coef_[0]
    order = np.argsort(weights)
    detail = {"auc": observed, "permutations": permutations,
              "more_in_current": [[names[i], round(float(weights[i]), 3)] for i in order[::-1][:top] if weights[i] > 0],
              "more_in_reference": [[names[i], round(float(weights[i]), 3)] for i in order[:top] if weights[i] < 0],
              "most_unlike_reference": [current[i] for i in np.argsort(-scores[len(reference):])[:top]]}
    return Signal("classifier", observed, _permutation_p(observed, null), observed - 0.5, min_effect, detail)


def psi(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """Population stability index over the reference's quantile bins (a share of 0 counts as 0.5 of a row)."""
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)))
    edges[0], edges[-1] = -np.inf, np.inf
    if len(edges) < 3:  # the reference has (almost) one value: two bins, below and above it
        edges = np.array([-np.inf, float(np.median(reference)) + 0.5, np.inf])
    ref = np.histogram(reference, edges)[0].astype(float)
    cur = np.histogram(current, edges)[0].astype(float)
    ref = np.maximum(ref, 0.5) / max(ref.sum(), 1)
    cur = np.maximum(cur, 0.5) / max(cur.sum(), 1)
    return float(((cur - ref) * np.log(cur / ref)).sum())


def length(reference_lengths, current_lengths, min_effect: float = 0.1) -> Signal:
    """PSI of prompt lengths (0.1: the usual 'moderate shift' line) with a KS test's p-value."""
    from scipy.stats import ks_2samp

    ref, cur = np.asarray(reference_lengths, float), np.asarray(current_lengths, float)
    value = psi(ref, cur)
    test = ks_2samp(ref, cur)
    return Signal("length", value, float(test.pvalue), value, min_effect,
                  {"ks": float(test.statistic), "reference_median": float(np.median(ref)),
                   "current_median": float(np.median(cur))})


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def oov(vocabulary: set[str], reference: list[str], current: list[str], min_effect: float = 0.02) -> Signal:
    """Share of words outside the training vocabulary: current vs held-out (one-sided two-proportion z-test)."""
    from scipy.stats import norm

    def counts(texts):
        tokens = [w for t in texts for w in words(t)]
        return sum(w not in vocabulary for w in tokens), max(len(tokens), 1)

    (a, n1), (b, n2) = counts(reference), counts(current)
    p1, p2 = a / n1, b / n2
    pooled = (a + b) / (n1 + n2)
    se = np.sqrt(max(pooled * (1 - pooled), 1e-12) * (1 / n1 + 1 / n2))
    z = (p2 - p1) / se
    return Signal("oov", float(z), float(norm.sf(z)), p2 - p1, min_effect,
                  {"reference_rate": p1, "current_rate": p2, "reference_words": n1, "current_words": n2})


def loss(reference_losses, current_losses, min_effect: float = 0.05) -> Signal:
    """Is the tuned model more surprised by the new prompts? Mann-Whitney U (one-sided); effect = the relative
    rise of the median loss."""
    from scipy.stats import mannwhitneyu

    ref, cur = np.asarray(reference_losses, float), np.asarray(current_losses, float)
    test = mannwhitneyu(cur, ref, alternative="greater")
    rise = float(np.median(cur) / max(np.median(ref), 1e-9) - 1)
    return Signal("loss", float(test.statistic), float(test.pvalue), rise, min_effect,
                  {"reference_median": float(np.median(ref)), "current_median": float(np.median(cur))})


def task_metric(reference_correct, current_correct, min_effect: float = 0.02) -> Signal:
    """Labelled rows: accuracy on new rows vs held-out (one-sided two-proportion z-test); effect = the drop."""
    from scipy.stats import norm

    ref, cur = np.asarray(reference_correct, float), np.asarray(current_correct, float)
    p1, p2 = ref.mean(), cur.mean()
    pooled = (ref.sum() + cur.sum()) / (len(ref) + len(cur))
    se = np.sqrt(max(pooled * (1 - pooled), 1e-12) * (1 / len(ref) + 1 / len(cur)))
    z = (p1 - p2) / se
    return Signal("task", float(z), float(norm.sf(z)), float(p1 - p2), min_effect,
                  {"reference_accuracy": float(p1), "current_accuracy": float(p2)})


def holm(signals: list[Signal], alpha: float) -> None:
    """Holm-Bonferroni adjusted p-values; `drifted` = adjusted p < alpha and effect >= the signal's minimum."""
    order = sorted(range(len(signals)), key=lambda i: signals[i].p_value)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(signals) - rank) * signals[i].p_value))
        signals[i].p_adjusted = running
    for s in signals:
        s.drifted = bool(s.p_adjusted < alpha and s.effect >= s.min_effect)
