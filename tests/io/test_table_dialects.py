"""Tables as spreadsheets write them: separators, byte-order marks, trailing separators,
decimal commas; and the errors that name the file and the fix."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from spatiome._core.validate import SpatiomeInputError
from spatiome.io import read, read_reference_table, read_slideseq, read_table
from spatiome.io.tables import Dialect, sniff

COUNTS = [[1, 2], [3, 4], [0, 5]]
XY = [[1.5, 2.0], [3.0, 4.25], [0.5, 0.0]]


def _lines(sep: str, decimal: str = ".", trailing: str = "") -> tuple[str, str]:
    """A counts and a coords table (3 spots, 2 genes) with the given separator."""
    counts = [sep.join(["spot", "Actb", "Gfap"])]
    coords = [sep.join(["spot", "x", "y"])]
    for i, (row, xy) in enumerate(zip(COUNTS, XY, strict=True)):
        counts.append(sep.join([f"s{i}", *map(str, row)]))
        coords.append(sep.join([f"s{i}", *(str(v).replace(".", decimal) for v in xy)]))
    return (
        "".join(line + trailing + "\n" for line in counts),
        "".join(line + trailing + "\n" for line in coords),
    )


def _write(folder, counts: str, coords: str, *, bom: bool = False, gz: bool = False):
    prefix = "\ufeff" if bom else ""
    counts_path = folder / ("counts.csv.gz" if gz else "counts.csv")
    if gz:
        with gzip.open(counts_path, "wt", encoding="utf-8") as handle:
            handle.write(prefix + counts)
    else:
        counts_path.write_text(prefix + counts, encoding="utf-8")
    (folder / "coords.csv").write_text(prefix + coords, encoding="utf-8")
    return counts_path, folder / "coords.csv"


def _check(adata):
    assert adata.obs_names.tolist() == ["s0", "s1", "s2"]
    assert adata.var_names.tolist() == ["Actb", "Gfap"]
    np.testing.assert_array_equal(adata.X.toarray(), COUNTS)
    np.testing.assert_allclose(adata.obsm["spatial"], XY)
    assert list(adata.obs.columns) == ["x", "y"]  # no empty trailing column


@pytest.mark.parametrize("sep", [",", ";", "\t", "|"])
@pytest.mark.parametrize("bom", [False, True])
@pytest.mark.parametrize("gz", [False, True])
def test_separator_and_byte_order_mark_are_detected(tmp_path, sep, bom, gz):
    counts, coords = _lines(sep)
    _write(tmp_path, counts, coords, bom=bom, gz=gz)
    _check(read(tmp_path))


def test_excel_csv_utf8_coords_with_byte_order_mark(tmp_path):
    counts, coords = _lines(",")
    _, coords_path = _write(tmp_path, counts, coords)
    coords_path.write_bytes(b"\xef\xbb\xbf" + coords.replace("\n", "\r\n").encode())
    _check(read_table(tmp_path / "counts.csv", coords_path))


@pytest.mark.parametrize("sep", [";", "\t"])
def test_explicit_sep_is_honoured_by_read_of_a_folder(tmp_path, sep):
    counts, coords = _lines(sep)
    _write(tmp_path, counts, coords)
    _check(read(tmp_path, sep=sep))
    _check(read_table(tmp_path / "counts.csv", tmp_path / "coords.csv", sep=sep))


def test_wrong_explicit_sep_says_which_separator_the_file_uses(tmp_path):
    counts, coords = _lines(",")
    _write(tmp_path, counts, coords)
    with pytest.raises(SpatiomeInputError, match="pass sep=','") as err:
        read(tmp_path, sep=";")
    assert str(tmp_path / "coords.csv") in str(err.value)
    with pytest.raises(SpatiomeInputError, match="pass sep=','") as err:
        read_table(tmp_path / "counts.csv", tmp_path / "coords.csv", sep=";")


@pytest.mark.parametrize("sep", [",", ";", "\t"])
def test_trailing_separator_on_every_line_is_read(tmp_path, sep):
    counts, coords = _lines(sep, trailing=sep)
    _write(tmp_path, counts, coords)
    _check(read(tmp_path))


@pytest.mark.parametrize("header_trailing", [True, False])
def test_trailing_separator_on_data_lines_only_or_r_header(tmp_path, header_trailing):
    ending = "," if header_trailing else ""
    (tmp_path / "counts.csv").write_text(f"spot,Actb,Gfap{ending}\ns0,1,2,\ns1,3,4,\ns2,0,5,\n")
    (tmp_path / "coords.csv").write_text(f"spot,x,y{ending}\ns0,1.5,2,\ns1,3,4.25,\ns2,.5,0,\n")
    _check(read(tmp_path))
    (tmp_path / "counts.csv").write_text("Actb,Gfap,\ns0,1,2,\ns1,3,4,\ns2,0,5,\n")
    _check(read(tmp_path))


def test_trailing_empty_field_with_values_below_is_named(tmp_path):
    (tmp_path / "counts.csv").write_text("spot,Actb,Gfap\ns0,1,2,\ns1,3,4,9\ns2,0,5,\n")
    _, coords = _lines(",")
    (tmp_path / "coords.csv").write_text(coords)
    with pytest.raises(SpatiomeInputError, match="line 3 has a value there") as err:
        read(tmp_path)
    assert str(tmp_path / "counts.csv") in str(err.value)


@pytest.mark.parametrize("sep", [";", "\t"])
def test_decimal_commas_are_read_with_a_non_comma_separator(tmp_path, sep):
    counts, coords = _lines(sep, decimal=",")
    _write(tmp_path, counts, coords)
    assert sniff(tmp_path / "coords.csv") == Dialect(sep, ",")
    assert sniff(tmp_path / "counts.csv") == Dialect(sep, ".")
    _check(read(tmp_path))


def test_quoted_decimal_commas_in_a_comma_separated_file_are_named(tmp_path):
    counts, _ = _lines(",")
    coords = 'spot,x,y\ns0,"1,5",2\ns1,3,"4,25"\ns2,"0,5",0\n'
    _write(tmp_path, counts, coords)
    with pytest.raises(SpatiomeInputError, match="decimal comma") as err:
        read(tmp_path)
    assert str(tmp_path / "coords.csv") in str(err.value) and "'1,5'" in str(err.value)


def test_decimal_comma_counts_are_named(tmp_path):
    (tmp_path / "counts.csv").write_text('spot,Actb,Gfap\ns0,"1,5",2\ns1,3,4\ns2,0,5\n')
    (tmp_path / "coords.csv").write_text(_lines(",")[1])
    with pytest.raises(SpatiomeInputError, match="decimal comma") as err:
        read(tmp_path)
    assert str(tmp_path / "counts.csv") in str(err.value)


def test_empty_count_cell_names_its_row_and_column(tmp_path):
    (tmp_path / "counts.csv").write_text("spot,Actb,Gfap\ns0,1,2\ns1,,4\ns2,0,5\n")
    (tmp_path / "coords.csv").write_text(_lines(",")[1])
    with pytest.raises(SpatiomeInputError, match="NaN") as err:
        read(tmp_path)
    message = str(err.value)
    assert str(tmp_path / "counts.csv") in message and "'s1'" in message and "'Actb'" in message


def test_non_utf8_file_is_named_with_the_fix(tmp_path):
    (tmp_path / "counts.csv").write_text(_lines(",")[0])
    (tmp_path / "coords.csv").write_bytes("spot,x,y,note\ns0,1,2,caf\xe9\n".encode("latin-1"))
    with pytest.raises(SpatiomeInputError, match="CSV UTF-8") as err:
        read(tmp_path)
    assert str(tmp_path / "coords.csv") in str(err.value)


def test_mismatched_fields_name_the_separator_and_the_fix(tmp_path):
    (tmp_path / "counts.csv").write_text("spot,Actb,Gfap\ns0,1,2,3,4\n")
    (tmp_path / "coords.csv").write_text(_lines(",")[1])
    with pytest.raises(SpatiomeInputError, match="comma separator") as err:
        read_table(tmp_path / "counts.csv", tmp_path / "coords.csv")
    assert str(tmp_path / "counts.csv") in str(err.value)


@pytest.mark.parametrize("sep", ["", ";;", '"'])
def test_bad_sep_argument(tmp_path, sep):
    _write(tmp_path, *_lines(","))
    with pytest.raises(SpatiomeInputError, match="sep must be one character"):
        read_table(tmp_path / "counts.csv", tmp_path / "coords.csv", sep=sep)


def test_slideseq_locations_with_semicolons(tmp_path):
    (tmp_path / "dge.csv").write_text("Row,AAAC,CCGT\nGad1,4,0\nPcp2,0,9\n")
    (tmp_path / "beads.csv").write_text("barcodes;xcoord;ycoord\nCCGT;10,5;3\nAAAC;2;8\n")
    beads = read_slideseq(tmp_path / "dge.csv", tmp_path / "beads.csv")
    assert beads.obsm["spatial"].tolist() == [[2.0, 8.0], [10.5, 3.0]]


# --- reference tables ----------------------------------------------------------------


def _reference(folder, *, labels_header="cell,cell_type,nUMI", sep=",", genes_x_cells=False):
    cells = ["c1", "c2", "c3", "c4"]
    counts = np.array([[5, 0, 1], [0, 7, 0], [4, 1, 0], [0, 0, 9]])
    genes = ["Gad1", "Slc17a7", "Mbp"]
    if genes_x_cells:
        lines = [sep.join(["gene", *cells])]
        lines += [sep.join([g, *map(str, counts[:, j])]) for j, g in enumerate(genes)]
    else:
        lines = [sep.join(["cell", *genes])]
        lines += [sep.join([c, *map(str, row)]) for c, row in zip(cells, counts, strict=True)]
    (folder / "counts.csv").write_text("\n".join(lines) + "\n")
    types = ["Inh", "Exc", "Inh", "Oligo"]
    rows = [labels_header.replace(",", sep)]
    rows += [sep.join([c, t, "10"]) for c, t in reversed(list(zip(cells, types, strict=True)))]
    (folder / "types.csv").write_text("\n".join(rows) + "\n")
    return folder / "counts.csv", folder / "types.csv", counts, types


@pytest.mark.parametrize("genes_x_cells", [False, True])
@pytest.mark.parametrize("sep", [",", ";"])
def test_reference_table_both_orientations(tmp_path, genes_x_cells, sep):
    counts_path, types_path, counts, types = _reference(
        tmp_path, sep=sep, genes_x_cells=genes_x_cells
    )
    reference = read_reference_table(counts_path, types_path)
    assert reference.obs_names.tolist() == ["c1", "c2", "c3", "c4"]
    assert reference.obs["cell_type"].tolist() == types
    assert reference.obs["nUMI"].tolist() == [10, 10, 10, 10]
    np.testing.assert_array_equal(reference.layers["counts"].toarray(), counts)
    assert reference.X.dtype.kind == "i" and "spatial" not in reference.obsm
    source = reference.uns["spatiome"]["source"]
    assert source["labels_column"] == "cell_type" and len(source["paths"]) == 2


@pytest.mark.parametrize(
    ("header", "found"),
    [
        ("cell,CellType,nUMI", "CellType"),
        ("cell,labels,nUMI", "labels"),
        ("cell,type,nUMI", "type"),
        ("cell,subclass", "subclass"),
    ],
)
def test_reference_label_column_is_found(tmp_path, header, found):
    if header == "cell,subclass":
        cells_types = "cell,subclass\nc1,Inh\nc2,Exc\nc3,Inh\nc4,Oligo\n"
        _reference(tmp_path)
        (tmp_path / "types.csv").write_text(cells_types)
    else:
        _reference(tmp_path, labels_header=header)
    reference = read_reference_table(tmp_path / "counts.csv", tmp_path / "types.csv")
    assert reference.obs["cell_type"].tolist() == ["Inh", "Exc", "Inh", "Oligo"]
    assert reference.uns["spatiome"]["source"]["labels_column"] == found


def test_reference_label_column_errors(tmp_path):
    _reference(tmp_path, labels_header="cell,group,nUMI")
    with pytest.raises(SpatiomeInputError, match="cannot tell which column") as err:
        read_reference_table(tmp_path / "counts.csv", tmp_path / "types.csv")
    assert "'group'" in str(err.value) and "--reference-labels" in str(err.value)
    reference = read_reference_table(
        tmp_path / "counts.csv", tmp_path / "types.csv", labels_column="group", key_added="x"
    )
    assert reference.obs["x"].tolist() == ["Inh", "Exc", "Inh", "Oligo"]
    _reference(tmp_path)
    with pytest.raises(SpatiomeInputError, match="seem to be in 'cell_type'"):
        read_reference_table(tmp_path / "counts.csv", tmp_path / "types.csv", labels_column="y")


def test_reference_cells_without_labels_are_named(tmp_path):
    _reference(tmp_path)
    (tmp_path / "types.csv").write_text("cell,cell_type\nc1,Inh\nc2,Exc\n")
    with pytest.raises(SpatiomeInputError, match="no row for 2 of 4 cells") as err:
        read_reference_table(tmp_path / "counts.csv", tmp_path / "types.csv")
    assert str(tmp_path / "types.csv") in str(err.value)
    (tmp_path / "types.csv").write_text("cell,cell_type\nc1,Inh\nc2,Exc\nc3,\nc4,Oligo\n")
    with pytest.raises(SpatiomeInputError, match="1 cells have no value"):
        read_reference_table(tmp_path / "counts.csv", tmp_path / "types.csv")
