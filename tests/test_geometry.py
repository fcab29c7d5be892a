"""The detector description: pixel layers and modules, calorimeter cells, ids, neighbours."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hltemu.config import ConfigError, DetectorConfig
from hltemu.geometry import BarrelLayer, Disk, build_geometry, default_geometry


@pytest.fixture(scope="module")
def geom():
    return default_geometry()


# -- pixel detector ---------------------------------------------------------------------------
def test_pixel_layers_are_cms_phase1(geom):
    pix = geom.pixel
    assert pix.n_layers == 10
    assert [b.radius for b in pix.barrel] == [2.9, 6.8, 10.9, 16.0]
    assert [d.z for d in pix.disks] == [29.1, 39.6, 51.6, -29.1, -39.6, -51.6]
    assert [pix.layer(i).layer for i in range(10)] == list(range(10))
    assert (pix.pitch_x, pix.pitch_y) == (0.0100, 0.0150)
    with pytest.raises(ValueError, match="valid ids 0-9"):
        pix.layer(10)


@pytest.mark.parametrize("layer_id", range(10))
def test_module_local_coordinates_round_trip(geom, layer_id):
    surf = geom.pixel.layer(layer_id)
    rng = np.random.default_rng(layer_id)
    phi = rng.uniform(-math.pi, math.pi, 2000)
    if isinstance(surf, BarrelLayer):
        z = rng.uniform(-surf.half_length, surf.half_length, 2000)
        module, u, v = surf.global_to_local(phi, z)
        x0, y0, z0 = surf.radius * np.cos(phi), surf.radius * np.sin(phi), z
        width = surf.radius * surf.ladder_dphi
        length = surf.module_length
        assert np.all(np.abs(u) <= width / 2 + 1e-9) and np.all(np.abs(v) <= length / 2 + 1e-9)
    else:
        assert isinstance(surf, Disk)
        r = rng.uniform(surf.r_min, surf.r_max, 2000)
        x0, y0 = r * np.cos(phi), r * np.sin(phi)
        z0 = np.full_like(x0, surf.z)
        module, u, v = surf.global_to_local(x0, y0)
        ring_width = max(np.diff(surf.ring_radii))
        assert np.all(np.abs(v) <= ring_width / 2 + 0.5)  # flat module: corners stick out
    assert module.min() >= 0 and module.max() < surf.n_modules
    x, y, zz = geom.pixel.local_to_global(np.full(2000, layer_id), module, u, v)
    np.testing.assert_allclose(x, x0, atol=1e-9)
    np.testing.assert_allclose(y, y0, atol=1e-9)
    np.testing.assert_allclose(zz, z0, atol=1e-9)


def test_every_module_is_used(geom):
    b = geom.pixel.barrel[0]
    phi = np.linspace(-math.pi, math.pi, 4001)[:-1]
    z = np.linspace(-b.half_length, b.half_length, 81)[:-1] + 0.01
    pp, zz = np.meshgrid(phi, z)
    module, _, _ = b.global_to_local(pp.ravel(), zz.ravel())
    assert np.array_equal(np.unique(module), np.arange(b.n_modules))


# -- calorimeter ------------------------------------------------------------------------------
def test_default_calorimeter_size(geom):
    calo = geom.calo
    assert [lay.name for lay in calo.layers] == ["EM1", "EM2", "HAD1", "HAD2", "HAD3"]
    assert calo.section_layers("ECAL") == (0, 1) and calo.section_layers("HCAL") == (2, 3, 4)
    # EM1 0.025 x 2pi/256 and EM2 0.05 x 2pi/128 over |eta| < 3, HCAL 0.1 x 2pi/64, 3 layers.
    assert calo.n_cells == 240 * 256 + 120 * 128 + 3 * 60 * 64 == 88320
    assert calo.layers[0].deta == pytest.approx(0.025)
    assert calo.layers[2].deta == pytest.approx(0.1)
    for arr in (calo.cell_layer, calo.cell_eta, calo.cell_phi, calo.noise_sigma):
        assert arr.shape == (calo.n_cells,)


def test_cell_id_ordering(geom):
    """id = layer_offset + i_eta * n_phi + i_phi, eta from -eta_max, phi from -pi."""
    calo = geom.calo
    for lay in calo.layers:
        first = calo.layer_offset[lay.index]
        assert calo.cell_layer[first] == lay.index
        assert calo.cell_eta[first] == pytest.approx(-lay.eta_max + lay.deta / 2)
        assert calo.cell_phi[first] == pytest.approx(-math.pi + lay.dphi / 2)
        assert calo.cell_phi[first + 1] == pytest.approx(-math.pi + 1.5 * lay.dphi)
        assert calo.cell_eta[first + lay.n_phi] == pytest.approx(-lay.eta_max + 1.5 * lay.deta)
        # find_cells at the cell centres gives back the ids
        sl = slice(first, calo.layer_offset[lay.index + 1])
        ids = calo.find_cells(lay.index, calo.cell_eta[sl], calo.cell_phi[sl])
        assert np.array_equal(ids, np.arange(first, calo.layer_offset[lay.index + 1]))
    assert calo.find_cells(0, np.array([3.2, -3.01]), np.array([0.0, 0.0])).tolist() == [-1, -1]


def test_noise_sigma_is_part_of_the_geometry(geom):
    calo = geom.calo
    again = build_geometry(DetectorConfig()).calo
    assert np.array_equal(calo.noise_sigma, again.noise_sigma)  # fixed per-cell pattern
    assert calo.noise_sigma.dtype == np.float32 and np.all(calo.noise_sigma > 0)
    em1 = calo.cell_layer == 0
    central = em1 & (np.abs(calo.cell_eta) < 0.5)
    forward = em1 & (np.abs(calo.cell_eta) > 2.5)
    assert 0.025 < calo.noise_sigma[central].mean() < 0.035  # ~30 MeV in EM1
    assert calo.noise_sigma[forward].mean() > 1.2 * calo.noise_sigma[central].mean()
    had = calo.cell_layer >= 2
    assert calo.noise_sigma[had].mean() > 0.1  # HCAL: > 100 MeV


def _brute_force_neighbours(calo) -> set[tuple[int, int]]:
    """Neighbour pairs from the definition, cell by cell (small grids only)."""
    pairs = set()
    n = calo.n_cells
    lay_of = calo.cell_layer
    for a in range(n):
        la = calo.layers[lay_of[a]]
        for b in range(n):
            if a == b:
                continue
            lb = calo.layers[lay_of[b]]
            if la.index == lb.index:
                de = abs(int(calo.cell_ieta[a]) - int(calo.cell_ieta[b]))
                dp = abs(int(calo.cell_iphi[a]) - int(calo.cell_iphi[b]))
                dp = min(dp, la.n_phi - dp)
                if de <= 1 and dp <= 1:
                    pairs.add((a, b))
            elif abs(la.index - lb.index) == 1:
                ea0 = calo.cell_eta[a] - la.deta / 2
                eb0 = calo.cell_eta[b] - lb.deta / 2
                pa0 = calo.cell_iphi[a] * la.dphi
                pb0 = calo.cell_iphi[b] * lb.dphi
                overlap_e = min(ea0 + la.deta, eb0 + lb.deta) - max(ea0, eb0)
                overlap_p = min(pa0 + la.dphi, pb0 + lb.dphi) - max(pa0, pb0)
                if overlap_e > 1e-9 and overlap_p > 1e-9:
                    pairs.add((a, b))
    return pairs


@settings(max_examples=25, deadline=None)
@given(
    layers=st.lists(
        st.tuples(st.sampled_from([2, 3, 4, 6]), st.sampled_from([3, 4, 6, 8]),
                  st.sampled_from([1.0, 1.5])),
        min_size=1, max_size=3,
    )
)
def test_neighbours_match_the_definition(layers):
    """CSR neighbours equal a brute-force pairwise check on random small grids."""
    n = len(layers)
    cfg = dataclasses.replace(
        DetectorConfig(),
        calo_names=tuple(f"L{i}" for i in range(n)), calo_sections=("ECAL",) * n,
        calo_eta_max=tuple(em for _, _, em in layers),
        calo_n_eta=tuple(ne for ne, _, _ in layers), calo_n_phi=tuple(np_ for _, np_, _ in layers),
        calo_noise=(0.05,) * n, calo_lsb=(0.01,) * n,
        calo_em_fraction=(1.0,) + (0.0,) * (n - 1), calo_had_fraction=(1.0,) + (0.0,) * (n - 1),
        calo_mip=(0.1,) * n, calo_em_width=(1.0,) * n, calo_had_width=(1.0,) * n,
        calo_window=(1,) * n,
    )
    calo = build_geometry(cfg).calo
    offsets, indices = calo.neighbours()
    got = {(a, int(b)) for a in range(calo.n_cells) for b in indices[offsets[a]:offsets[a + 1]]}
    assert got == _brute_force_neighbours(calo)


def test_default_neighbours(geom):
    calo = geom.calo
    offsets, indices = calo.neighbours()
    assert offsets.dtype == np.int64 and indices.dtype == np.int32
    assert offsets.shape == (calo.n_cells + 1,) and offsets[-1] == indices.shape[0]
    src = np.repeat(np.arange(calo.n_cells), np.diff(offsets))
    assert not np.any(src == indices)
    # symmetric
    fwd = np.sort(src * calo.n_cells + indices)
    bwd = np.sort(indices.astype(np.int64) * calo.n_cells + src)
    assert np.array_equal(fwd, bwd)
    # only the same or adjacent layers
    assert np.all(np.abs(calo.cell_layer[src] - calo.cell_layer[indices]) <= 1)
    # an EM1 cell in the middle: 8 in-layer neighbours, 1 EM2 cell (4 EM1 cells per EM2 cell)
    lay = calo.layers[0]
    c = int(calo.cell_id(0, np.array(100), np.array(50)))
    nb = indices[offsets[c]:offsets[c + 1]]
    assert np.sum(calo.cell_layer[nb] == 0) == 8 and np.sum(calo.cell_layer[nb] == 1) == 1
    # phi wraps: iphi = 0 neighbours iphi = n_phi - 1
    c0 = int(calo.cell_id(0, np.array(100), np.array(0)))
    nb0 = indices[offsets[c0]:offsets[c0 + 1]]
    assert int(calo.cell_id(0, np.array(100), np.array(lay.n_phi - 1))) in nb0
    # eta does not wrap: an edge cell has 5 in-layer neighbours
    ce = int(calo.cell_id(0, np.array(0), np.array(10)))
    nbe = indices[offsets[ce]:offsets[ce + 1]]
    assert np.sum(calo.cell_layer[nbe] == 0) == 5


def test_detector_config_is_validated():
    with pytest.raises(ConfigError, match="calo_em_fraction must sum to 1"):
        DetectorConfig(calo_em_fraction=(0.5, 0.2, 0.0, 0.0, 0.0))
    with pytest.raises(ConfigError, match="calo_n_phi needs 5 entries"):
        DetectorConfig(calo_n_phi=(256, 128))
    with pytest.raises(ConfigError, match="'TILE' is not 'ECAL' or 'HCAL'"):
        DetectorConfig(calo_sections=("ECAL", "ECAL", "TILE", "HCAL", "HCAL"))
    with pytest.raises(ConfigError, match="hit_efficiency"):
        DetectorConfig(hit_efficiency=1.5)
