"""printfarm.toml: parsed, validated with errors that say where, and parts found without one."""

from __future__ import annotations

from pathlib import Path

import pytest

from farm.core.manifest import MANIFEST_NAME, ManifestError, discover_parts, load_manifest, parse_manifest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "makerrepo_project"


def test_the_example_manifest_loads_with_its_matrix_and_print_rules() -> None:
    manifest = load_manifest(EXAMPLE)
    assert [p.name for p in manifest.parts] == ["sample-tray", "tray", "lid"]
    tray = manifest.part("tray")
    assert tray.param_sets() == [{"pocket_diameter": 14, "pockets": 3}, {"pocket_diameter": 14, "pockets": 6}]
    assert (
        tray.prints_on_tag("v1.2") and not tray.prints_on_tag("release-1") and not tray.prints_on_push("main")
    )
    lid = manifest.part("lid")
    assert lid.prints_on_push("main") and not lid.prints_on_push("dev") and not lid.prints_on_tag("v1")
    assert lid.targets[0].copies == 2 and lid.targets[0].per_plate == 2
    assert manifest.part("sample-tray").param_sets() == [{}]
    assert not manifest.discovered


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[[parts]\nname='a'", "not valid TOML"),
        ("[[parts]]\nname='a'\nfile='../x.py'", 'parts[0] ("a").file: file is a .py script'),
        ("[[parts]]\nname='a'\nfile='/etc/x.py'", "inside it"),
        ("[[parts]]\nname='a b'\nfile='x.py'", 'parts[0] ("a b").name'),
        ("[[parts]]\nname='a'\nfile='x.py'\n[[parts.targets]]\ncopies=0", 'parts[0] ("a").targets[0].copies'),
        ("[[parts]]\nname='a'\nfile='x.py'\nprint='on-tag'", "needs at least one [[parts.targets]]"),
        ("[[parts]]\nname='a'\nfile='x.py'\nprint='always'", "print"),
        ("[[parts]]\nname='a'\nfile='x.py'\ncolour='red'", "colour: Extra inputs are not permitted"),
        ("[[parts]]\nname='a'\nfile='x.py'\n[[parts]]\nname='a'\nfile='y.py'", "two parts are named 'a'"),
        ("[[parts]]\nname='a'\nfile='x.py'\nmatrix={n=[]}", "matrix axis 'n' has no values"),
        (
            "[[parts]]\nname='a'\nfile='x.py'\nmatrix={a=[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15],"
            "b=[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15]}",
            "makes 225 builds; at most 200",
        ),
        ("[[parts]]\nname='a'\nfile='x.py'\nparams={n=1}\nmatrix={n=[1,2]}", "n in both params and matrix"),
        ("version = 2", "version"),
    ],
)
def test_a_bad_manifest_says_where_and_what(text: str, says: str) -> None:
    with pytest.raises(ManifestError) as caught:
        parse_manifest(text)
    assert str(caught.value).startswith(MANIFEST_NAME + ": ")
    assert says in str(caught.value)


def test_a_part_must_name_a_script_that_exists_inside_the_checkout(tmp_path: Path) -> None:
    (tmp_path / MANIFEST_NAME).write_text("[[parts]]\nname='a'\nfile='missing.py'\n")
    with pytest.raises(ManifestError, match=r"part .a.: missing\.py does not exist"):
        load_manifest(tmp_path)
    outside = tmp_path.parent / f"{tmp_path.name}-outside.py"
    outside.write_text("x = 1\n")
    (tmp_path / "link.py").symlink_to(outside)
    (tmp_path / MANIFEST_NAME).write_text("[[parts]]\nname='a'\nfile='link.py'\n")
    with pytest.raises(ManifestError, match="leads outside the repository"):
        load_manifest(tmp_path)


def test_without_a_manifest_every_artifact_is_built_and_nothing_printed(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text(
        "from mr import artifact, customizable\nimport mr\n\n@artifact\ndef plate():\n    pass\n\n"
        "@mr.artifact\ndef knob():\n    pass\n\n@customizable\ndef sized(p):\n    pass\n"
    )
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.py").write_text("from mr import artifact\n@artifact\ndef plate():\n    pass\n")
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "c.py").write_text("from mr import artifact\n@artifact\ndef hidden():\n    pass\n")
    (tmp_path / "broken.py").write_text("def (:\n")
    manifest = discover_parts(tmp_path)
    assert manifest.discovered
    assert [(p.name, p.file, p.artifact, p.print) for p in manifest.parts] == [
        ("plate", "a.py", "plate", "manual"),
        ("knob", "a.py", "knob", "manual"),
        ("b.plate", "sub/b.py", "plate", "manual"),
    ]
    assert load_manifest(tmp_path).parts == manifest.parts
