import json

import numpy as np
import pytest
from references import seed_bin_masks

from data_tools.neutrino import (
    DATA_COLUMNS,
    SIM_COLUMNS,
    HESEBinning,
    event_weights,
    model_inputs,
    read_hese_json,
    simulate_hese_data,
    simulate_hese_toy,
    with_exposure,
    write_hese_json,
)

# The first two simulated and data events printed in the exercise, in its column order.
SEED_SIM_MAPPING = {
    "astroWeight": 0,
    "atmoWeight": 1,
    "energy": 2,
    "primaryEnergy": 3,
    "primaryZenith": 4,
    "topology": 5,
    "zenith": 6,
}
SEED_SIM_ROWS = [
    [1.455e-05, 9.797e-06, 1.007e05, 1.391e05, 1.581, 0.0, 1.500],
    [7.289e-06, 4.587e-07, 3.191e05, 2.485e05, 0.7607, 0.0, 0.9098],
]
SEED_DATA_MAPPING = {"energy": 0, "topology": 1, "zenith": 2}
SEED_DATA_ROWS = [
    [62222.55968669473, 0.0, 0.5310690569408663],
    [61677.44976245666, 0.0, 0.350297145700488],
]


def _write(path, mapping, rows):
    path.write_text(json.dumps({"mapping": mapping, "events": rows}))
    return path


# ---------------------------------------------------------------------------- JSON I/O
def test_reads_the_exercise_format_as_is(tmp_path):
    sim = read_hese_json(_write(tmp_path / "sim.json", SEED_SIM_MAPPING, SEED_SIM_ROWS))
    assert set(sim) == set(SIM_COLUMNS)
    np.testing.assert_allclose(sim["primaryEnergy"], [1.391e05, 2.485e05])
    np.testing.assert_allclose(sim["zenith"], [1.5, 0.9098])
    data = read_hese_json(_write(tmp_path / "data.json", SEED_DATA_MAPPING, SEED_DATA_ROWS))
    assert set(data) == set(DATA_COLUMNS)
    np.testing.assert_allclose(data["energy"], [62222.55968669473, 61677.44976245666])


def test_columns_are_found_through_the_mapping_not_position(tmp_path):
    perm = [6, 2, 0, 5, 1, 4, 3]  # new position of each seed column
    mapping = {name: perm[i] for name, i in SEED_SIM_MAPPING.items()}
    rows = []
    for row in SEED_SIM_ROWS:
        new = [0.0] * 8  # with an extra unused column at the end
        for name, i in SEED_SIM_MAPPING.items():
            new[mapping[name]] = row[i]
        rows.append(new)
    sim = read_hese_json(_write(tmp_path / "sim.json", mapping, rows))
    np.testing.assert_allclose(sim["astroWeight"], [1.455e-05, 7.289e-06])
    np.testing.assert_allclose(sim["primaryZenith"], [1.581, 0.7607])


def test_write_then_read_round_trips(tmp_path):
    sim = simulate_hese_toy(500, rng=1)
    write_hese_json(tmp_path / "sim.json", sim)
    back = read_hese_json(tmp_path / "sim.json", kind="simulation")
    for c in SIM_COLUMNS:
        np.testing.assert_array_equal(back[c], sim[c])
    content = json.loads((tmp_path / "sim.json").read_text())
    assert content["mapping"] == SEED_SIM_MAPPING  # sorted names: the exercise's own order


@pytest.mark.parametrize(
    ("column", "value", "match"),
    [
        ("atmoWeight", float("nan"), r"'atmoWeight' has nan at row 1"),
        ("astroWeight", -1e-6, r"'astroWeight' has a negative weight .* at row 1"),
        ("energy", -5.0, r"'energy' has a non-positive energy .* at row 1"),
        ("primaryEnergy", "abc", r"'primaryEnergy' has a non-numeric value 'abc' at row 1"),
        ("zenith", None, r"'zenith' has a non-numeric value None at row 1"),
        ("topology", 3.0, r"'topology' has 3.0 at row 1"),
        ("primaryZenith", 4.0, r"'primaryZenith' has 4.0 at row 1"),
    ],
)
def test_bad_values_name_column_and_row(tmp_path, column, value, match):
    rows = [list(r) for r in SEED_SIM_ROWS]
    rows[1][SEED_SIM_MAPPING[column]] = value
    path = tmp_path / "sim.json"
    path.write_text(json.dumps({"mapping": SEED_SIM_MAPPING, "events": rows}))
    with pytest.raises(ValueError, match=match):
        read_hese_json(path)


def test_missing_column_is_named(tmp_path):
    mapping = dict(SEED_SIM_MAPPING)
    del mapping["primaryEnergy"]
    with pytest.raises(ValueError, match=r"missing column\(s\) \['primaryEnergy'\]"):
        read_hese_json(_write(tmp_path / "sim.json", mapping, SEED_SIM_ROWS), kind="simulation")


def test_short_row_and_bad_json_are_reported(tmp_path):
    rows = [SEED_DATA_ROWS[0], [1.0, 0.0]]
    with pytest.raises(ValueError, match="row 1 has 2 values"):
        read_hese_json(_write(tmp_path / "d.json", SEED_DATA_MAPPING, rows))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_hese_json(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="keys 'mapping' and 'events'"):
        read_hese_json(tmp_path / "list.json")


def test_write_refuses_bad_events_and_leaves_existing_file(tmp_path):
    path = tmp_path / "data.json"
    path.write_text("previous content")
    bad = {"energy": np.array([1e5, np.inf]), "topology": np.zeros(2), "zenith": np.ones(2)}
    with pytest.raises(ValueError, match="'energy' has inf at row 1"):
        write_hese_json(path, bad)
    assert path.read_text() == "previous content"
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind
    short = {"energy": np.ones(3), "topology": np.zeros(2), "zenith": np.ones(3)}
    with pytest.raises(ValueError, match="'topology' has 2 rows"):
        write_hese_json(path, short)


# ---------------------------------------------------------------------------- binning
def test_bin_index_matches_the_exercise_masks(rng):
    n = 20_000
    energy = 10 ** rng.uniform(4.5, 7.2, n)
    energy[:5] = [60.0e3, 1.0e7, 59_999.0, 1.0e7 - 1, 6.0e4 * 1.0000001]  # edges
    zenith = np.arccos(rng.uniform(-1, 1, n))
    zenith[5:8] = [0.0, np.pi, np.pi / 2]
    topology = rng.integers(0, 2, n).astype(float)
    b = HESEBinning()
    idx = b.bin_index(energy, zenith, topology)
    masks = seed_bin_masks(
        energy, zenith, topology, b.energy_edges, b.zenith_edges, b.topology_edges
    )
    expected = np.full(n, -1)
    for i, m in enumerate(masks):
        expected[m] = i
    np.testing.assert_array_equal(idx, expected)
    np.testing.assert_array_equal(b.counts(idx), [m.sum() for m in masks])
    w = rng.uniform(size=n)
    np.testing.assert_allclose(b.sum_per_bin(idx, w), [w[m].sum() for m in masks])


def test_binning_is_configurable_and_describes_itself():
    b = HESEBinning.from_cos_zenith(np.geomspace(1e4, 1e6, 4), [-1, 0, 1])
    assert b.shape == (2, 2, 3) and b.n_bins == 12
    idx = b.bin_index([2e4, 2e5, 5e5], [0.1, 3.0, 3.0], [0, 1, 1])
    # energy bin 0, down-going (zenith bin 0), cascade; then tracks, up-going
    np.testing.assert_array_equal(idx, [0, (1 * 2 + 1) * 3 + 1, (1 * 2 + 1) * 3 + 2])
    coords = b.coords()
    assert coords["cos_zenith"][0] == pytest.approx(0.5)
    assert coords["topology"][-1] == 1
    assert b.unflatten(np.arange(12)).shape == (2, 2, 3)
    with pytest.raises(ValueError, match="strictly increasing"):
        HESEBinning(energy_edges=np.array([1e5, 1e4]))
    with pytest.raises(ValueError, match="within \\[0, pi\\]"):
        HESEBinning(zenith_edges=np.array([0.0, 4.0]))


def test_counts_rejects_out_of_range_indices():
    b = HESEBinning()
    with pytest.raises(ValueError, match=r"index\[1\] = 400 is out of range"):
        b.counts(np.array([0, 400]))
    with pytest.raises(TypeError, match="integer bin indices"):
        b.counts(np.array([0.0, 1.0]))


# ---------------------------------------------------------------------------- simulation
def test_toy_simulation_is_physical_and_reproducible():
    sim = simulate_hese_toy(50_000, rng=7)
    again = simulate_hese_toy(50_000, rng=7)
    for c in SIM_COLUMNS:
        np.testing.assert_array_equal(sim[c], again[c])
        assert sim[c].shape == (50_000,) and np.isfinite(sim[c]).all()
    e = sim["primaryEnergy"]
    assert e.min() >= 3e4 and e.max() <= 3e7
    # E^-2.5 injection: the maximum-likelihood index of a bounded power law
    slope = 1 + e.size / np.sum(np.log(e / 3e4))
    assert slope == pytest.approx(2.5, abs=0.05)
    cos_z = np.cos(sim["primaryZenith"])
    assert abs(cos_z.mean()) < 0.02 and cos_z.std() == pytest.approx(1 / np.sqrt(3), abs=0.01)
    assert sim["topology"].mean() == pytest.approx(0.3, abs=0.01)
    ratio = sim["energy"] / e
    cascades = sim["topology"] == 0
    assert np.median(ratio[cascades]) == pytest.approx(0.94, abs=0.03)
    assert np.median(ratio[~cascades]) < 0.5
    # up-going events at high energy are absorbed by the Earth
    up = cos_z < -0.5
    hi = e > 1e6
    assert sim["astroWeight"][up & hi].mean() < 0.5 * sim["astroWeight"][~up & hi].mean()
    # atmospheric weights fall ~E^-1.2 relative to the injection, astro weights rise ~E^0.4
    down = ~up
    lo_e, hi_e = (e < 1e5) & down, (e > 1e6) & down
    assert sim["atmoWeight"][hi_e].mean() < 0.1 * sim["atmoWeight"][lo_e].mean()


def test_toy_normalisation_gives_about_100_events_at_the_exercise_fit():
    sim = simulate_hese_toy(400_000, rng=3)
    b = HESEBinning()
    inside = b.events_bin_index(sim) >= 0
    atmo = sim["atmoWeight"][inside].sum()
    total = event_weights(sim, atmo_norm=1.0, astro_norm=6.7, astro_gamma=3.0)[inside].sum()
    assert 90 < total < 110
    assert 0.15 < atmo / total < 0.35


def test_data_draws_follow_the_reweighted_simulation():
    sim = simulate_hese_toy(100_000, rng=11)
    w = event_weights(sim, atmo_norm=1.0, astro_norm=6.7, astro_gamma=3.0)
    sizes = [
        len(
            simulate_hese_data(sim, atmo_norm=1.0, astro_norm=6.7, astro_gamma=3.0, rng=s)["energy"]
        )
        for s in range(200)
    ]
    # Poisson(sum w): mean within 4 standard errors, variance close to the mean
    assert abs(np.mean(sizes) - w.sum()) < 4 * np.sqrt(w.sum() / 200)
    assert np.var(sizes) == pytest.approx(w.sum(), rel=0.3)
    data = simulate_hese_data(sim, atmo_norm=1.0, astro_norm=6.7, astro_gamma=3.0, rng=1)
    assert set(data) == set(DATA_COLUMNS)
    again = simulate_hese_data(sim, atmo_norm=1.0, astro_norm=6.7, astro_gamma=3.0, rng=1)
    np.testing.assert_array_equal(data["energy"], again["energy"])


def test_event_weights_formula():
    sim = {
        "atmoWeight": np.array([1.0, 2.0]),
        "astroWeight": np.array([3.0, 4.0]),
        "primaryEnergy": np.array([1e5, 1e6]),
    }
    w = event_weights(sim, atmo_norm=0.5, astro_norm=2.0, astro_gamma=3.0)
    np.testing.assert_allclose(w, [0.5 + 6.0, 1.0 + 8.0 * 10**-0.5])
    w = event_weights(sim, atmo_norm=0.0, astro_norm=1.0, astro_gamma=2.5, astro_curvature=0.1)
    np.testing.assert_allclose(w, [3.0, 4.0 * np.exp(-0.1 * np.log(10) ** 2)])
    with pytest.raises(ValueError, match="atmo_norm and astro_norm must be >= 0"):
        event_weights(sim, atmo_norm=-1.0, astro_norm=1.0, astro_gamma=2.5)
    with pytest.raises(ValueError, match="astro_gamma must be finite"):
        event_weights(sim, atmo_norm=1.0, astro_norm=1.0, astro_gamma=np.nan)


@pytest.mark.parametrize("n", [0, -5])
def test_simulate_rejects_bad_sizes(n):
    with pytest.raises(ValueError, match="n_events must be >= 1"):
        simulate_hese_toy(n)
    with pytest.raises(TypeError, match="n_events must be an int"):
        simulate_hese_toy(10.0)


def test_model_inputs_bins_both_samples():
    sim = simulate_hese_toy(5_000, rng=1)
    data = simulate_hese_data(sim, atmo_norm=1.0, astro_norm=6.7, astro_gamma=3.0, rng=2)
    inputs = model_inputs(sim, data)
    assert inputs["counts"].shape == (400,)
    assert inputs["counts"].sum() == (HESEBinning().events_bin_index(data) >= 0).sum()
    assert inputs["mc_bin"].shape == (5_000,)
    with pytest.raises(ValueError, match=r"sim: missing column\(s\) \['primaryEnergy'\]"):
        model_inputs({k: v for k, v in sim.items() if k != "primaryEnergy"}, data)


def test_with_exposure_scales_both_weights():
    sim = simulate_hese_toy(100, rng=2)
    longer = with_exposure(sim, 10.0)
    np.testing.assert_allclose(longer["atmoWeight"], 10 * sim["atmoWeight"])
    np.testing.assert_allclose(longer["astroWeight"], 10 * sim["astroWeight"])
    np.testing.assert_array_equal(longer["energy"], sim["energy"])
    with pytest.raises(ValueError, match="factor must be a positive number"):
        with_exposure(sim, 0.0)


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (0, ValueError, "n must be >= 1, got 0"),
        (2.0, TypeError, "n must be an int"),
        (True, TypeError, "n must be an int"),
    ],
)
def test_as_int(value, error, match):
    from data_tools.checks import as_int

    with pytest.raises(error, match=match):
        as_int("n", value)
    assert as_int("n", np.int64(3)) == 3
