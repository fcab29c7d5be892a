"""The detector description: pixel layers and modules, calorimeter cells, ids, neighbours."""

from __future__ import annotations

import ast
import dataclasses
import math
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hltemu.config import ConfigError, DetectorConfig
from hltemu.geometry import (
    BARREL_LAYERS,
    DISK_LAYERS,
    N_BARREL_LAYERS,
    N_PIXEL_LAYERS,
    BarrelLayer,
    Disk,
    build_geometry,
    default_geometry,
    is_barrel_layer,
)

REPO = Path(__file__).resolve().parent.parent


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


# -- one source for detector constants --------------------------------------------------------
def test_default_detector_values_are_the_ones_the_cuts_used():
    """The doublet cuts and the CNN features used to restate the field, the pitch along local y
    and the sensor thickness (3.8 T, 0.0150 cm, 0.0285 cm); they now read the default geometry,
    which must hold exactly these floats for every product to stay bit-identical."""
    geom = default_geometry()
    assert geom.b_field == 3.8 and geom.config.b_field == 3.8
    assert geom.pixel.pitch_y == 0.0150 and geom.pixel.thickness == 0.0285
    assert geom.pixel.thickness / geom.pixel.pitch_y == 0.0285 / 0.0150


def test_barrel_layer_ids_match_the_default_geometry(geom):
    pix = geom.pixel
    assert BARREL_LAYERS + DISK_LAYERS == tuple(range(N_PIXEL_LAYERS)) == tuple(range(10))
    assert N_BARREL_LAYERS == len(pix.barrel) == 4 and N_PIXEL_LAYERS == pix.n_layers
    assert all(isinstance(pix.layer(i), BarrelLayer) for i in BARREL_LAYERS)
    assert all(isinstance(pix.layer(i), Disk) for i in DISK_LAYERS)
    ids = np.arange(N_PIXEL_LAYERS, dtype=np.int32)
    np.testing.assert_array_equal(is_barrel_layer(ids), np.isin(ids, BARREL_LAYERS))
    assert [bool(is_barrel_layer(i)) for i in range(10)] == [i in BARREL_LAYERS for i in range(10)]


#: Names that make a compared expression a pixel layer id.
_LAYER_WORDS = re.compile(r"layer|inner|outer|\blid\b")
#: (operator, constant) pairs that split layer ids 0-3 from 4-9, with the constant on the right.
_BARREL_SPLITS = {(ast.Lt, 4), (ast.GtE, 4), (ast.LtE, 3), (ast.Gt, 3)}
_MIRROR = {ast.Lt: ast.Gt, ast.Gt: ast.Lt, ast.LtE: ast.GtE, ast.GtE: ast.LtE}


def literal_barrel_tests(source: str) -> list[int]:
    """Lines comparing a layer-like expression with a literal barrel boundary (``layer < 4``,
    ``inner_layer >= 4``, ``lid <= 3``, ``4 > outer``, ...)."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        for left, op, right in zip(operands[:-1], node.ops, operands[1:], strict=True):
            for expr, op_type, const in ((left, type(op), right),
                                         (right, _MIRROR.get(type(op)), left)):
                if (isinstance(const, ast.Constant) and type(const.value) is int
                        and (op_type, const.value) in _BARREL_SPLITS
                        and _LAYER_WORDS.search(ast.unparse(expr))):
                    lines.append(node.lineno)
    return lines


def test_the_finder_sees_literal_barrel_tests():
    old = (
        'cuts[:, 4] = inner < 4\n'
        'b = d["outer_layer"] < 4\n'
        'c = 4 > layer\n'
        'e = lid <= 3\n'
        'f = layer < N_BARREL_LAYERS\n'  # not a literal
        'g = len(head) >= 4 + size\n'  # not a layer
        'h = n_bins < 4\n'  # not a layer
    )
    assert literal_barrel_tests(old) == [1, 2, 3, 4]


def test_no_literal_barrel_test_in_the_package():
    """"Is a barrel layer" is :func:`hltemu.geometry.is_barrel_layer` (:data:`BARREL_LAYERS`);
    no module of the package (hltemu/ and kernels/) writes it as ``layer < 4`` again."""
    found = {}
    for folder in (REPO / "hltemu", REPO / "kernels"):
        for path in sorted(folder.rglob("*.py")):
            lines = literal_barrel_tests(path.read_text(encoding="utf-8"))
            if lines:
                found[str(path.relative_to(REPO))] = lines
    assert not found, f"barrel tests written with a literal layer id (use is_barrel_layer): {found}"
