"""agent/priors/calibration.py: the temperature fit shared by every prior method (cross-fit, audit labels,
class balance, top-label likelihood)."""

from __future__ import annotations

import numpy as np
import pytest

from agent.pool import InvalidArgument, Pool
from agent.priors import PRIOR_METHODS
from agent.priors.calibration import TemperatureFit
from tests.agent.priors.blobs import LABELED, X, Y
from tests.agent.strategies.pools import blobs, make_pool


def overlapping_blobs(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """4 classes x 150 rows whose blobs overlap, so every prior is wrong on a good share of rows."""
    return blobs(clusters=4, per_cluster=150, dim=8, spread=0.45, seed=seed)


@pytest.mark.parametrize("name", sorted(PRIOR_METHODS))
def test_calibration_brings_ece_down_and_keeps_accuracy(name: str) -> None:
    from bench.metrics import expected_calibration_error

    raw_ece, cal_ece = [], []
    for seed in range(3):
        x, y = overlapping_blobs(seed)
        lab = np.random.default_rng(seed).choice(len(x), 40, replace=False)
        pool = make_pool(x, y, lab)
        rows = pool.candidates
        raw = PRIOR_METHODS[name](pool, rows, np.random.default_rng(0), {"calibrate": "false"})
        cal = PRIOR_METHODS[name](pool, rows, np.random.default_rng(0), {})
        np.testing.assert_allclose(cal.probs.sum(axis=1), 1.0, rtol=1e-5)
        np.testing.assert_allclose(cal.confidence, cal.probs.max(axis=1), rtol=1e-6)
        # every class has labels here, so calibration cannot change any row's top class
        np.testing.assert_array_equal(cal.probs.argmax(axis=1), raw.probs.argmax(axis=1))
        raw_ece.append(expected_calibration_error(raw.probs, y[rows]))
        cal_ece.append(expected_calibration_error(cal.probs, y[rows]))
    assert np.mean(cal_ece) <= 0.08, (raw_ece, cal_ece)
    assert np.mean(cal_ece) <= np.mean(raw_ece) + 0.01, (raw_ece, cal_ece)


def test_calibration_gives_unlabelled_classes_their_share() -> None:
    x, y = overlapping_blobs(0)
    lab = np.flatnonzero(y < 2)[::10]  # classes 2 and 3 have no label
    pool = make_pool(x, y, lab)
    pr = PRIOR_METHODS["knn"](pool, pool.candidates, np.random.default_rng(0), {})
    np.testing.assert_allclose(pr.probs[:, 2:], 0.25, rtol=1e-5)  # (1 - 2/4) / 2 each
    np.testing.assert_allclose(pr.probs[:, :2].sum(axis=1), 0.5, rtol=1e-5)


def test_calibration_param_and_fallback() -> None:
    from agent.priors.calibration import fit_temperature, held_out
    from agent.priors.knn import knn_prior

    pool = make_pool(X, Y, LABELED)
    with pytest.raises(InvalidArgument, match="calibrate"):
        PRIOR_METHODS["knn"](pool, pool.candidates, np.random.default_rng(0), {"calibrate": "maybe"})
    with pytest.raises(InvalidArgument, match="calibrate"):
        PRIOR_METHODS["knn"](pool, pool.candidates, np.random.default_rng(0), {"nope": "1"})
    # calibrate=false is the method itself
    raw = knn_prior(pool, pool.candidates, np.random.default_rng(0), {})
    off = PRIOR_METHODS["knn"](pool, pool.candidates, np.random.default_rng(0), {"calibrate": "false"})
    np.testing.assert_array_equal(raw.probs, off.probs)
    # One label per class: no held-out sample keeps its class, so the temperature is the default.
    assert held_out(pool, knn_prior, {}, np.random.default_rng(0)) == []
    assert fit_temperature([], 1.0) == 1.0


def few_labels_missing_classes() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """10 separated blobs; classes 0-3 have 2 labels, class 4 one, classes 5-9 none (9 labels, 5 classes):
    about half of the unlabelled rows are of a class no method can name."""
    x, y = blobs(clusters=10, per_cluster=60, dim=16, spread=0.05, seed=3)
    lab = np.concatenate([np.flatnonzero(y == c)[:2] for c in range(4)] + [np.flatnonzero(y == 4)[:1]])
    return x, y, lab


@pytest.mark.parametrize("name", sorted(PRIOR_METHODS))
def test_calibration_few_labels_confidence_tracks_accuracy(name: str) -> None:
    from bench.metrics import expected_calibration_error

    x, y, lab = few_labels_missing_classes()
    pool = make_pool(x, y, lab)
    rows = pool.candidates
    raw = PRIOR_METHODS[name](pool, rows, np.random.default_rng(0), {"calibrate": "false"})
    cal = PRIOR_METHODS[name](pool, rows, np.random.default_rng(0), {})
    np.testing.assert_array_equal(cal.probs.argmax(axis=1), raw.probs.argmax(axis=1))
    right = cal.probs.argmax(axis=1) == y[rows]
    acc = float(right.mean())
    assert 0.4 < acc < 0.6  # the rows of the 5 labelled classes, and only those
    conf = cal.probs.max(axis=1)
    # Low accuracy, so low mean confidence: within 0.1 of the accuracy (0.49)
    assert abs(float(conf.mean()) - acc) < 0.1, (conf.mean(), acc)
    assert expected_calibration_error(cal.probs, y[rows]) < 0.2
    # rows of a labelled class (near a label) are trusted far more than rows of a class nobody labelled
    # (with one share 1 - S / C = 0.5 for every row, no row's confidence could pass 0.5: knn's ECE 0.35)
    assert conf[right].mean() > 0.8 > 0.25 > conf[~right].mean()


@pytest.mark.parametrize("name", sorted(PRIOR_METHODS))
def test_calibration_never_changes_the_top_class(name: str) -> None:
    for seed in range(4):
        x, y = blobs(clusters=6, per_cluster=50, dim=8, spread=0.45, seed=seed)
        rng = np.random.default_rng(seed)
        lab = rng.choice(len(x), int(rng.integers(3, 13)), replace=False)  # 3-12 labels: classes missing
        pool = make_pool(x, y, lab)
        rows = pool.candidates
        raw = PRIOR_METHODS[name](pool, rows, np.random.default_rng(1), {"calibrate": "false"})
        cal = PRIOR_METHODS[name](pool, rows, np.random.default_rng(1), {})
        np.testing.assert_array_equal(cal.probs.argmax(axis=1), raw.probs.argmax(axis=1))
        np.testing.assert_allclose(cal.probs.sum(axis=1), 1.0, rtol=1e-5)


def test_novelty_slope_from_the_labelled_set() -> None:
    from agent.priors.calibration import novelty_slope, unlabelled_class_mass

    x, y, lab = few_labels_missing_classes()
    pool = make_pool(x, y, lab)
    # the only label of class 4 is far from every other label, the pairs are close: distance matters
    assert novelty_slope(pool, 0.5, 0.3) > 1.0
    m = unlabelled_class_mass(pool, pool.candidates)
    unlabelled = y[pool.candidates] >= 5
    assert m[unlabelled].mean() > 0.75 > 0.25 > m[~unlabelled].mean()  # mean 0.5 = 1 - 5 / 10
    # every class with two labels: nothing to contrast, so the even share 1 - S / C for every row
    pair = make_pool(x, y, lab[:8])
    assert novelty_slope(pair, 0.5, 0.3) == 0.0
    np.testing.assert_allclose(unlabelled_class_mass(pair, pair.candidates), 0.6)


def typical_labels_and_audit(seed: int, audit: int = 40) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """4 classes, each a tight core of 20 rows inside a wide halo of 130 that overlaps the other classes';
    the labelled set is 10 core rows per class (the most typical: what typiclust picks, predicted right
    held out far more often than the pool) plus ``audit`` rows drawn uniformly from the rest (the audit
    labels): (x, y, labelled rows, audit rows)."""
    xc, yc = blobs(clusters=4, per_cluster=20, dim=8, spread=0.05, seed=seed)
    xh, yh = blobs(clusters=4, per_cluster=130, dim=8, spread=0.8, seed=seed)  # the same centres
    x, y = np.concatenate([xc, xh]), np.concatenate([yc, yh])
    typical = np.concatenate([np.flatnonzero(yc == c)[:10] for c in range(4)])
    rest = np.setdiff1d(np.arange(len(x)), typical)
    drawn = np.sort(np.random.default_rng(seed).choice(rest, audit, replace=False))
    return x, y, np.concatenate([typical, drawn]), drawn


@pytest.mark.parametrize("name", sorted(PRIOR_METHODS))
def test_audit_labels_fit_the_temperature_closer_to_the_pool(name: str) -> None:
    """A typical labelled set makes the labelled-set fit over-confident on the pool; fitted on the audit
    labels (a random sample), the mean confidence is closer to the accuracy, and no top class moves."""
    from dataclasses import replace

    from agent.params import FitSettings
    from agent.priors.calibration import cached_temperature

    gap_labelled, gap_audit = [], []
    for seed in range(4):
        x, y, lab, drawn = typical_labels_and_audit(seed)
        labelled_fit = make_pool(x, y, lab)  # the same labels, the audit draws unknown
        audit_fit = replace(labelled_fit, audit=drawn)
        fit = cached_temperature(audit_fit, PRIOR_METHODS[name], {}, np.random.default_rng(0), FitSettings())
        assert fit.fitting_set == "audit" and 20 <= fit.samples <= len(drawn)
        rows = labelled_fit.candidates
        raw = PRIOR_METHODS[name](labelled_fit, rows, np.random.default_rng(0), {"calibrate": "false"})
        a = PRIOR_METHODS[name](labelled_fit, rows, np.random.default_rng(0), {})
        b = PRIOR_METHODS[name](audit_fit, rows, np.random.default_rng(0), {})
        np.testing.assert_array_equal(a.probs.argmax(axis=1), raw.probs.argmax(axis=1))
        np.testing.assert_array_equal(b.probs.argmax(axis=1), raw.probs.argmax(axis=1))
        np.testing.assert_allclose(b.probs.sum(axis=1), 1.0, rtol=1e-5)
        acc = float(np.mean(raw.probs.argmax(axis=1) == y[rows]))
        gap_labelled.append(abs(float(a.confidence.mean()) - acc))
        gap_audit.append(abs(float(b.confidence.mean()) - acc))
    # measured: |mean confidence - accuracy| 0.09-0.13 with the labelled fit, 0.05-0.07 with the audit fit
    assert np.mean(gap_audit) < np.mean(gap_labelled), (gap_labelled, gap_audit)


def test_audit_fit_needs_enough_audit_labels() -> None:
    """Below AUDIT_MIN_LABELS labelled audit samples the labelled-set cross-fit answers, exactly as without
    the audit; drawn but unlabelled samples are no audit labels; only audit labels are held out; the
    audit's own pool (audited_pool) knows no draws, so the audit is never scored with a temperature
    fitted on the labels it is scored on."""
    from dataclasses import replace

    from agent.audit import audited_pool
    from agent.params import FitSettings
    from agent.priors.calibration import AUDIT_MIN_LABELS, audit_held_out, cached_temperature

    knn = PRIOR_METHODS["knn"]
    x, y, lab, drawn = typical_labels_and_audit(0, audit=AUDIT_MIN_LABELS - 1)
    plain = make_pool(x, y, lab)
    few = replace(plain, audit=drawn)
    assert cached_temperature(few, knn, {}, np.random.default_rng(0), FitSettings()).fitting_set == "labelled"
    np.testing.assert_array_equal(knn(plain, plain.candidates, np.random.default_rng(0), {}).probs,
                                  knn(few, few.candidates, np.random.default_rng(0), {}).probs)
    x, y, lab, drawn = typical_labels_and_audit(0, audit=AUDIT_MIN_LABELS + 5)
    unlabelled = make_pool(x, y, lab[~np.isin(lab, drawn)])
    assert audit_held_out(replace(unlabelled, audit=drawn), knn, {}, np.random.default_rng(0)) == []
    ok = replace(make_pool(x, y, lab), audit=drawn)
    held = audit_held_out(ok, knn, {}, np.random.default_rng(0))
    # every class has selected labels outside the folds, so every audit label is held out once, and only they
    np.testing.assert_array_equal(np.sort(np.concatenate([h[1] for h in held])), np.sort(y[drawn]))
    assert len(audited_pool(ok, drawn).audit) == 0


def test_class_balanced_fit_matches_the_pools_accuracy_not_the_popular_class() -> None:
    """Known answer: three covered classes, every held-out sample's raw top probability 0.9. The class
    the labelled set holds most of (120 held-out samples) is predicted right 90% of the time, the two
    others (30 each) 30%: the held-out accuracy is 0.7, the pool's (balanced classes) 0.5. With a constant
    top probability the likelihood-optimal tempered top probability is the (weighted) accuracy, so the
    class-balanced fit lands near 0.5, the unweighted one near 0.7; on a balanced synthetic pool with the
    same per-class rates the first is calibrated and the second over-confident. (180 samples, so the MAP
    prior's pull toward the default temperature, the weight of 2 samples, is small.)"""
    from agent.priors.calibration import class_balanced_weights, fit_temperature, tempered
    from bench.metrics import expected_calibration_error

    def rows(counts: dict[int, tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
        """Per class c: (right, wrong) rows; right rows put 0.9 on c, wrong ones on the next class."""
        probs, labels = [], []
        for c, (right, wrong) in counts.items():
            for top in [c] * right + [(c + 1) % 3] * wrong:
                p = np.full(3, 0.05)
                p[top] = 0.9
                probs.append(p)
                labels.append(c)
        return np.array(probs), np.array(labels)

    covered = np.ones(3, bool)
    probs, labels = rows({0: (108, 12), 1: (9, 21), 2: (9, 21)})
    np.testing.assert_allclose(class_balanced_weights(labels)[[0, 120, 150]], [0.5, 2.0, 2.0])
    assert class_balanced_weights(labels).sum() == pytest.approx(len(labels))
    held = [(probs, labels, covered)]
    pool_probs, pool_labels = rows({0: (900, 100), 1: (300, 700), 2: (300, 700)})  # balanced: accuracy 0.5

    def fit(balance: bool) -> tuple[float, float]:
        t = fit_temperature(held, 1.0, balance=balance)
        return (float(tempered(probs[:1], covered, t).max()),
                expected_calibration_error(tempered(pool_probs, covered, t), pool_labels))

    top_plain, ece_plain = fit(False)
    top_balanced, ece_balanced = fit(True)
    assert abs(top_plain - 0.7) < 0.04, top_plain
    assert abs(top_balanced - 0.5) < 0.04, top_balanced
    assert ece_balanced < 0.04 < 0.15 < ece_plain, (ece_balanced, ece_plain)


def test_every_answer_says_how_it_was_calibrated() -> None:
    """Priors.calibration: "default" with one label per class, "labelled" with its held-out count (few under
    FEW_HELD_OUT, with the audit labels still to give), "audit" once enough audit labels count, "off"
    uncalibrated; only the first two carry a warning: few held-out labels, or enough held-out labels of
    which fewer than AUDIT_MIN_LABELS were drawn uniformly (``chosen``)."""
    from dataclasses import replace

    from agent.priors.calibration import AUDIT_MIN_LABELS, FEW_HELD_OUT, TemperatureFit

    knn = PRIOR_METHODS["knn"]
    one_each = make_pool(X, Y, LABELED)
    got = knn(one_each, one_each.candidates, np.random.default_rng(0), {}).calibration
    assert got is not None and (got.fitting_set, got.samples, got.temperature) == ("default", 0, 1.0)
    for entry in PRIOR_METHODS.values():  # with nothing held out, each method's declared default is used
        fit = entry(one_each, one_each.candidates, np.random.default_rng(0), {}).calibration
        assert fit is not None and (fit.fitting_set, fit.temperature) == ("default", entry.fit.default_temperature)
    assert PRIOR_METHODS["llgc"].fit.default_temperature == 0.1  # its probabilities are flat (agent/priors)
    assert got.few and got.warning() == (
        f"confidences calibrated on no held-out label (the method's default temperature) (few, under "
        f"{FEW_HELD_OUT}): label {AUDIT_MIN_LABELS} audit samples (shortlist select --strategy audit) for "
        "trustworthy confidences")
    off = knn(one_each, one_each.candidates, np.random.default_rng(0), {"calibrate": "false"}).calibration
    assert off is not None and off.fitting_set == "off" and off.temperature == 0.0 and off.warning() == ""
    first_three = [np.flatnonzero(np.equal(Y, c))[:3] for c in range(5)]
    three_each = make_pool(X, Y, np.sort(np.concatenate(first_three)))
    assert len(three_each.labeled) == 15
    lab = knn(three_each, three_each.candidates, np.random.default_rng(0), {}).calibration
    assert lab is not None and lab.fitting_set == "labelled" and 0 < lab.samples < FEW_HELD_OUT and lab.few
    assert f"calibrated on {lab.samples} held-out labels (few" in lab.warning()
    x, y, labelled, drawn = typical_labels_and_audit(0, audit=AUDIT_MIN_LABELS + 5)
    audited = replace(make_pool(x, y, labelled), audit=drawn)
    fit = knn(audited, audited.candidates, np.random.default_rng(0), {}).calibration
    assert fit is not None and fit.fitting_set == "audit" and fit.samples >= AUDIT_MIN_LABELS
    assert fit.audit_labels == AUDIT_MIN_LABELS + 5 and not fit.few and fit.warning() == ""
    # many held-out labelled samples are not "few", but a labelled fit on them rests on chosen labels: it
    # says how many were drawn uniformly and asks for the audit labels still to give
    many = TemperatureFit(0.5, "labelled", FEW_HELD_OUT, 3)
    assert not many.few and many.chosen and not lab.chosen and not fit.chosen and not off.chosen
    assert many.warning() == (
        f"confidences calibrated on {FEW_HELD_OUT} held-out labels while 3 labels were drawn uniformly (audit or "
        f"random picks; labels a strategy chose need not speak for the pool): label {AUDIT_MIN_LABELS - 3} audit "
        "samples (shortlist select --strategy audit) for trustworthy confidences")
    assert "label more audit samples" in TemperatureFit(0.5, "labelled", 3, AUDIT_MIN_LABELS).warning()
    assert "label 1 audit sample (" in TemperatureFit(0.5, "labelled", 1, AUDIT_MIN_LABELS - 1).warning()
    # an open class list is named while the confidences cannot be trusted, not after
    assert TemperatureFit(0.5, "default", 0, open_classes=True).warning().endswith("serve --classes a,b,c)")
    assert replace(many, open_classes=True).warning().endswith("serve --classes a,b,c)")
    assert replace(fit, open_classes=True).warning() == ""


def test_fit_temperature_weights_are_the_class_balance_or_given() -> None:
    """``weights`` replaces the class-balanced ones: the same weights give the same T, uniform ones give the
    unweighted fit, and weights that drop the over-represented class move T."""
    from agent.priors.calibration import class_balanced_weights, fit_temperature

    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), 30)
    labels = np.r_[np.zeros(20, np.int64), np.ones(5, np.int64), np.full(5, 2)]
    held = [(probs, labels, np.ones(3, bool))]
    cb = class_balanced_weights(labels)
    assert fit_temperature(held, 1.0, weights=cb) == fit_temperature(held, 1.0, balance=True)
    assert fit_temperature(held, 1.0, balance=True, weights=np.ones(30)) == fit_temperature(held, 1.0)
    assert fit_temperature(held, 1.0, weights=np.r_[np.zeros(20), np.full(10, 3.0)]) != fit_temperature(held, 1.0)


def test_log_likelihoods_by_hand() -> None:
    from agent.priors.calibration import log_likelihoods

    q = np.array([[0.7, 0.2, 0.1], [0.5, 0.3, 0.2]])
    labels = np.array([0, 1])  # the first row's top class is right, the second's wrong
    np.testing.assert_allclose(log_likelihoods(q, labels, top_label=False), np.log([0.7, 0.3]))
    np.testing.assert_allclose(log_likelihoods(q, labels, top_label=True), np.log([0.7, 1 - 0.5]))


def test_the_temperature_fits_the_top_label_once_enough_samples_are_held_out(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A vote that gives nothing to the true class of its wrong rows (a class outside its neighbours):
    every row puts 0.98 on its top class, 0.02 on a runner-up and 0 on the third, and the wrong rows'
    true class is the third; 70% are right. The top-label fit (from TOP_LABEL_MIN_HELD_OUT held-out samples
    on) sets the top probability near 0.7, calibrated; the multiclass likelihood (used below that count)
    flattens T to lift the empty class, and leaves the top class under-confident."""
    from agent.priors import calibration
    from agent.priors.calibration import fit_temperature, tempered

    covered = np.ones(3, bool)
    row = np.array([[0.98, 0.02, 0.0]])
    held = [(np.repeat(row, 200, axis=0), np.where(np.arange(200) < 140, 0, 2), covered)]

    def top_probability() -> float:
        return float(tempered(row, covered, fit_temperature(held, 1.0)).max())

    assert calibration.TOP_LABEL_MIN_HELD_OUT <= 200
    assert abs(top_probability() - 0.7) < 0.02  # (the MAP prior toward T = 1 weighs 2 samples)
    monkeypatch.setattr(calibration, "TOP_LABEL_MIN_HELD_OUT", 10**6)  # the multiclass likelihood instead
    assert top_probability() < 0.62


def test_a_method_can_fit_the_top_label_from_fewer_held_out_samples() -> None:
    """``top_label_from`` moves the switch for one fit: the vote above with 100 held-out samples is fitted
    on the multiclass likelihood under the module's threshold (200), on the top-label one from 20."""
    from agent.priors import calibration
    from agent.priors.calibration import fit_temperature, tempered

    covered = np.ones(3, bool)
    row = np.array([[0.98, 0.02, 0.0]])
    held = [(np.repeat(row, 100, axis=0), np.where(np.arange(100) < 70, 0, 2), covered)]
    assert calibration.TOP_LABEL_MIN_HELD_OUT > 100
    multiclass = float(tempered(row, covered, fit_temperature(held, 1.0)).max())
    top = float(tempered(row, covered, fit_temperature(held, 1.0, top_label_from=20)).max())
    assert multiclass < 0.62 and abs(top - 0.7) < 0.03


@pytest.mark.parametrize("name", sorted(PRIOR_METHODS))
def test_accepted_priors_do_not_move_the_temperature(name: str) -> None:
    """Labels whose source is prior:METHOD (``Pool.accepted``) are the method's own answers, picked for their
    confidence: as ordinary labels they would join the held-out set and sharpen T. Left out, the fit's
    temperature and held-out count are those of the other labels alone, the warning says how many were
    left out and why, and the served prior still has them as seeds (they come back as labels)."""
    from dataclasses import replace

    x, y = overlapping_blobs(0)
    lab = np.sort(np.random.default_rng(0).choice(len(x), 40, replace=False))
    base = make_pool(x, y, lab)
    method = PRIOR_METHODS[name]
    raw = method(base, base.candidates, np.random.default_rng(0), {"calibrate": "false"})
    top = np.argsort(-raw.confidence, kind="stable")[:150]  # "accept all" on the most confident pages
    accepted = np.sort(base.candidates[top])
    y_acc = y.copy()
    y_acc[base.candidates[top]] = raw.probs[top].argmax(axis=1)  # what was accepted: the prior's top class
    as_labels = make_pool(x, y_acc, np.sort(np.r_[lab, accepted]))  # accepted priors as ordinary labels
    marked = replace(as_labels, accepted=accepted)

    def fit(pool: Pool) -> TemperatureFit:
        got = method(pool, pool.candidates[:5], np.random.default_rng(0), {}).calibration
        assert got is not None
        return got

    before, shifted, left = fit(base), fit(as_labels), fit(marked)
    # the feedback this guards against: counted as held out, they swell the held-out set and move T
    assert shifted.samples > before.samples + 100 and abs(np.log(shifted.temperature / before.temperature)) > 0.05
    assert (left.samples, left.temperature, left.fitting_set) == (before.samples, before.temperature,
                                                                  before.fitting_set)
    assert (left.left_out, before.left_out, shifted.left_out) == (150, 0, 0)
    note = ("150 accepted priors (source prior:*) left out of the held-out labels: a prior a person accepted is "
            "the method's own answer and would vouch for itself")
    assert note in left.warning() and note in left.describe() and "accepted" not in before.warning()
    # still seeds of the served prior: the accepted rows answer with their label, one-hot
    served = method(marked, accepted[:3], np.random.default_rng(0), {})
    np.testing.assert_array_equal(served.probs.argmax(axis=1), y_acc[accepted[:3]])
    np.testing.assert_array_equal(served.confidence, 1.0)
