"""LibreOffice help corpus: alignment by paragraph id, cleaning, split by page, determinism, speech subset.

Offline: every test builds from a small help tree written here in the layout of the Debian packages
(``<help>/<en-US|de|fr>/text/shared/01/<page>.html``, paragraphs ``<p id="par_id..." class="paragraph">``).
"""

import json
import os

import pytest
import soundfile as sf

from mu2slam_hf.cli.build_data import build_text_main
from mu2slam_hf.data import read_manifest
from mu2slam_hf.data.libreoffice import (
    Paragraph,
    align_paragraphs,
    choose_speech,
    clean_fragment,
    estimated_seconds,
    page_split,
    read_language,
    translation_pairs,
)

PAGE = """<!DOCTYPE html>
<html lang="{lang}" dir="ltr">
<head>
<base href="../../../../">
<meta http-equiv="Content-Type" content="text/html; charset=utf-8">
<title>Tables</title>
</head>
<body>
<header id="TopLeftHeader"><a class="logo" href="{lang}/text/shared/05/new_help.html"><p dir="auto">LibreOffice 7.4 Help</p></a></header>
<div id="DisplayArea" itemprop="softwareHelp" itemscope="true" itemtype="http://schema.org/SoftwareApplication">
<a name="bm_id3156116"></a>
{body}
</div>
<footer><div id="DEBUG" class="debug">
<h3 class="bug">Help content debug info:</h3>
<p dir="auto">This page is: <a href="https://opengrok.libreoffice.org/xref/help/source/{page}" target="_blank">/{page}</a></p>
<p id="bm_module" dir="auto"></p>
</div></footer>
</body>
</html>
"""
SWITCH = (
    '<span id="swlnsystextshared_1" class="switchinline"><span hidden="true" id="MACtextshared_1" class="MAC">'
    '<span class="menuitem">{mac}</span></span><span hidden="true" id="defaulttextshared_1">'
    '<span class="menuitem">{default}</span></span></span>'
)
TOOLS = SWITCH.format(mac="LibreOffice - Preferences", default="Tools - Options")
EXTRAS = SWITCH.format(mac="LibreOffice - Einstellungen", default="Extras - Optionen")
OUTILS = SWITCH.format(mac="LibreOffice - Préférences", default="Outils - Options")
ICON = '<img src="media/icon.png" alt="Icon" class="iconimage" width="1cm">'


def rows(n: int) -> list[tuple[str, str, str, dict[str, str]]]:
    """(tag, id, class, {dir: inner html}) of page ``n``; texts carry ``n`` so pages differ."""
    return [
        ("h1", "hd_id3148932", "", {"en-US": f"Inserting tables {n}", "de": f"Tabellen einfügen {n}",
                                    "fr": f"Insérer des tableaux {n}"}),
        ("p", "par_id3146060", "paragraph", {
            "en-US": f"Choose {TOOLS} to set the defaults of table {n} &amp; more.",
            "de": f"Wählen Sie {EXTRAS}, um die Vorgaben von Tabelle {n} &amp; mehr festzulegen.",
            "fr": f"Choisissez {OUTILS} pour définir les valeurs du tableau {n} &amp; plus."}),
        ("p", "par_id3150001", "paragraph", {"en-US": f"Tables {n} can be nested.", "de": f"Tables {n} can be nested.",
                                             "fr": f"Les tableaux {n} peuvent être imbriqués."}),
        ("p", "par_id3150002", "code", {d: f"Dim table{n} As Object" for d in ("en-US", "de", "fr")}),
        ("p", "par_id3150003", "paragraph", {
            "en-US": 'Choose <span class="menuitem">Table - Insert Table</span>.',
            "de": 'Wählen Sie <span class="menuitem">Tabelle - Tabelle einfügen</span>.',
            "fr": 'Choisissez <span class="menuitem">Tableau - Insérer un tableau</span>.'}),
        ("p", "par_id3150004", "paragraph", {"en-US": "Every page says this sentence.",
                                             "de": "Jede Seite sagt diesen Satz.", "fr": "Chaque page dit cette phrase."}),
        ("p", "par_id3150005", "paragraph", {"en-US": f"Click the {ICON} icon<br>to insert table {n}.",
                                             "de": f"Klicken Sie auf das Symbol {ICON}<br>, um Tabelle {n} einzufügen.",
                                             "fr": f"Cliquez sur l'icône {ICON}<br>pour insérer le tableau {n}."}),
        ("h2", "hd_id3150006", "", {"en-US": f"Only in English {n}"}),
    ]  # fmt: skip


def _pages() -> dict[str, str]:
    """The first fixture page names that fall in train, dev and test: ``{split: page}``."""
    found: dict[str, str] = {}
    for number in range(10_000):
        page = f"text/shared/01/{number:08d}.html"
        found.setdefault(page_split(page), page)
        if len(found) == 3:
            return found
    raise AssertionError("no page for some split")


PAGES = _pages()


def _element(tag: str, pid: str, css: str, inner: str) -> str:
    """``<p id="par_id..." class="paragraph" dir="auto">inner</p>`` as the help compiler writes it."""
    css_attr = f' class="{css}"' if css else ""
    return f'<{tag} id="{pid}"{css_attr} dir="auto">{inner}</{tag}>'


def write_help(root) -> str:
    """Writes the fixture help tree (German paragraphs in reverse order) and returns its folder."""
    for n, page in enumerate(sorted(PAGES.values())):
        for lang_dir in ("en-US", "de", "fr"):
            items = [row for row in rows(n) if lang_dir in row[3]]
            if lang_dir == "de":
                items.reverse()  # alignment must follow the ids, not the order
            body = "\n".join(_element(tag, pid, css, texts[lang_dir]) for tag, pid, css, texts in items)
            path = os.path.join(root, lang_dir, page)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(PAGE.format(lang=lang_dir, body=body, page=page.replace(".html", ".xhp")))
    return str(root)


@pytest.fixture
def help_dir(tmp_path):
    return write_help(tmp_path / "help")


def _paragraphs(help_dir) -> list[Paragraph]:
    return align_paragraphs({lang: read_language(help_dir, lang) for lang in ("en", "de", "fr")})


def test_clean_fragment_keeps_default_switch_and_decodes_entities():
    assert (
        clean_fragment(f"Choose {TOOLS} to set table 1 &amp; more.") == "Choose Tools - Options to set table 1 & more."
    )
    assert clean_fragment(f"Click the {ICON} icon<br>to insert &lt;x&gt;.") == "Click the icon to insert <x>."
    ui = 'Choose <span class="menuitem">Table - Insert Table</span>.'
    assert clean_fragment(ui, ("menuitem",)) == "Choose ."


def test_alignment_follows_ids_and_cleaning_drops_code_ui_copies_and_duplicates(help_dir):
    paragraphs = _paragraphs(help_dir)
    by_id = {(p.page, p.pid): p.texts for p in paragraphs}
    first = sorted(PAGES.values())[0]
    assert by_id[(first, "par_id3146060")] == {
        "en": "Choose Tools - Options to set the defaults of table 0 & more.",
        "de": "Wählen Sie Extras - Optionen, um die Vorgaben von Tabelle 0 & mehr festzulegen.",
        "fr": "Choisissez Outils - Options pour définir les valeurs du tableau 0 & plus.",
    }
    assert by_id[(first, "par_id3150001")] == {
        "en": "Tables 0 can be nested.",
        "fr": "Les tableaux 0 peuvent être imbriqués.",
    }
    assert by_id[(first, "hd_id3150006")] == {"en": "Only in English 0"}
    assert by_id[(first, "par_id3150005")]["en"] == "Click the icon to insert table 0."
    pids = [p.pid for p in paragraphs]
    assert "par_id3150002" not in pids and "par_id3150003" not in pids  # code, UI-only
    assert pids.count("par_id3150004") == 1  # the same sentence on every page is kept once


def test_every_page_in_one_split_and_duplicates_kept_in_train(help_dir):
    paragraphs = _paragraphs(help_dir)
    assert {p.split for p in paragraphs} == {"train", "dev", "test"}
    for p in paragraphs:
        assert p.split == page_split(p.page)
    (shared,) = [p for p in paragraphs if p.pid == "par_id3150004"]
    assert shared.split == "train"


def test_build_writes_text_and_mt_per_split_deterministically(help_dir, tmp_path):
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        build_text_main(
            ["--out", str(out), "--langs", "de,fr", "--help-dir", help_dir, "--pairs", "de-fr", "--workers", "1"]
        )
    for split in ("train", "dev", "test"):
        assert (outs[0] / f"{split}.jsonl").read_bytes() == (outs[1] / f"{split}.jsonl").read_bytes()
    summary = json.loads((outs[0] / "summary.json").read_text())
    assert summary["license"] == "MPL-2.0" and summary["pages"] == {"train": 1, "dev": 1, "test": 1}
    assert summary["cleaning"]["de/untranslated_or_length"] == 3
    for split, page in PAGES.items():
        rows = read_manifest(outs[0] / f"{split}.jsonl")
        key = page.replace(".html", "").replace("/", ".")
        assert rows and all(key in row["id"] for row in rows)  # no paragraph of another page
        mt = {(r["source_lang"], r["target_lang"]) for r in rows if r["task"] == "mt"}
        assert mt == {("en", "de"), ("de", "en"), ("en", "fr"), ("fr", "en"), ("de", "fr"), ("fr", "de")}
        texts = [r for r in rows if r["task"] == "text"]
        assert {r["source_lang"] for r in texts} == {"en", "de", "fr"}
        assert all("<" not in r["source_text"] and "&amp;" not in r["source_text"] for r in rows)


def test_translation_pairs_reject_unknown_language():
    assert translation_pairs(("en", "de"), ("de-en",)) == [("en", "de"), ("de", "en")]
    with pytest.raises(ValueError, match="'de-xx'"):
        translation_pairs(("en", "de"), ("de-xx",))


def test_missing_help_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get download libreoffice-help-de"):
        read_language(str(tmp_path), "de")


def test_speech_subset_respects_the_budget_and_gives_asr_and_ast(help_dir, tmp_path):
    paragraphs = _paragraphs(help_dir)
    lines = choose_speech(paragraphs, ("en", "de"), hours=0.002, seed=0)
    assert lines and {lang for _, lang, _ in lines} == {"en", "de"}
    total = sum(estimated_seconds(k, lang, text, 0) for k, lang, text in lines)
    assert total < 0.002 * 3600 + 3 * 60  # each split stops within one paragraph (< 60 s) past its share
    out = tmp_path / "speech"
    build_text_main(["--out", str(out), "--langs", "de,fr", "--help-dir", help_dir, "--speech-hours", "0.002",
                     "--speech-langs", "en,de", "--workers", "1"])  # fmt: skip
    rows = [r for split in ("train", "dev", "test") for r in read_manifest(out / f"{split}.jsonl")]
    ast = {(r["source_lang"], r["target_lang"]) for r in rows if r["task"] == "ast"}
    assert ast == {("en", "de"), ("de", "en"), ("en", "fr")}  # English audio also gives en-xx for unspoken xx
    for row in rows:
        if row["task"] == "asr":
            assert row["target_text"] == row["source_text"]
            assert sf.info(row["audio"]["path"]).samplerate == 16000
