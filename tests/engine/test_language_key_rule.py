"""The language key is nobody's: jobs (``jobs/``) and their library side (``engine/pipelines/``) speak store codes and
ask ``engine.languages``'s neutral questions (``language_key``, ``is_english``, ``text_code``, ``iso639_3``,
``to_fleurs``); a model family maps a store code to its own tokens itself (``Decoder.language``,
``Trainer.language``). So no module there imports or reads Whisper's mapping (``WHISPER_CODE_NAMES`` of
``engine.languages``) or an utterance's Whisper code (``Utterance.whisper_lang``), function-level imports included.
Checked on the real tree and on a planted violation, so that a scanner which can no longer fail fails too.
"""

import ast
import pathlib
import textwrap

REPO = pathlib.Path(__file__).resolve().parents[2]
SCANNED = ("engine/pipelines", "jobs")
LANGUAGES = "engine.languages"
# Whisper's codes and tables in engine.languages: the families' business, never a job's.
WHISPER_CODE_NAMES = frozenset({"fleurs_to_whisper", "whisper_code_or_none", "LANGUAGES", "NO_SPACE_LANGUAGES"})
WHISPER_ATTRIBUTES = frozenset({"whisper_lang"})  # engine.data.utterance.Utterance's Whisper code


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return None if inner is None else f"{inner}.{node.attr}"
    return None


def module_violations(tree: ast.Module, where: str) -> list[str]:
    """``where:line what`` for each use of Whisper's language codes in one module's syntax tree."""
    aliases = set()  # names this module binds to engine.languages itself
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0:
            for alias in node.names:
                if node.module == LANGUAGES and (alias.name in WHISPER_CODE_NAMES or alias.name == "*"):
                    bad.append((node.lineno, f"imports {alias.name} from {LANGUAGES}"))
                elif f"{node.module}.{alias.name}" == LANGUAGES:
                    aliases.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == LANGUAGES or alias.name.startswith(f"{LANGUAGES}."):
                    aliases.add(alias.asname or LANGUAGES)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        if node.attr in WHISPER_ATTRIBUTES:
            bad.append((node.lineno, f"reads {_dotted(node) or '.' + node.attr}"))
        elif node.attr in WHISPER_CODE_NAMES and _dotted(node.value) in aliases:
            bad.append((node.lineno, f"reads {_dotted(node)}"))
    return [f"{where}:{line} {what}" for line, what in sorted(bad)]


def violations(root: pathlib.Path = REPO) -> tuple[int, list[str]]:
    """(modules scanned, every violation under ``root``'s ``SCANNED`` folders)."""
    paths = sorted(p for folder in SCANNED for p in (root / folder).rglob("*.py"))
    bad = []
    for path in paths:
        bad += module_violations(ast.parse(path.read_text()), path.relative_to(root).as_posix())
    return len(paths), bad


def test_jobs_and_pipelines_never_use_whisper_s_language_codes():
    scanned, bad = violations()
    assert scanned > 100, f"the scan read {scanned} modules: too few to mean anything"
    why = (
        "jobs and pipelines speak store codes: ask engine.languages's neutral helpers (language_key, is_english, "
        "text_code) or the model (Decoder.language, Trainer.language), never Whisper's codes:"
    )
    assert not bad, "\n".join([why, *bad])


def test_the_rule_catches_planted_uses(tmp_path):
    planted = {
        "engine/pipelines/clean.py": """\
            from engine.languages import is_english, language_key, text_code
            from engine import languages
            import engine.languages as L


            def f(code, trainer, u):
                return language_key(code), languages.to_fleurs(code), L.iso639_3(code), trainer.language(u.lang)
            """,
        "engine/pipelines/job/run.py": """\
            from engine.languages import LANGUAGES, fleurs_to_whisper as to_whisper, language_key


            def english(code):
                # lazy: planted
                from engine.languages import whisper_code_or_none

                return whisper_code_or_none(code) == "en"
            """,
        "engine/pipelines/stages/step.py": """\
            import engine.languages
            from engine import languages as codes


            def f(code, u):
                return engine.languages.fleurs_to_whisper(code), codes.NO_SPACE_LANGUAGES, u.whisper_lang
            """,
        "jobs/job.py": "import engine.languages as L\nfrom engine.languages import *\n\nKEYS = sorted(L.LANGUAGES)\n",
    }
    for rel, text in planted.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(textwrap.dedent(text))
    assert violations(tmp_path) == (
        4,
        [
            "engine/pipelines/job/run.py:1 imports LANGUAGES from engine.languages",
            "engine/pipelines/job/run.py:1 imports fleurs_to_whisper from engine.languages",
            "engine/pipelines/job/run.py:6 imports whisper_code_or_none from engine.languages",
            "engine/pipelines/stages/step.py:6 reads codes.NO_SPACE_LANGUAGES",
            "engine/pipelines/stages/step.py:6 reads engine.languages.fleurs_to_whisper",
            "engine/pipelines/stages/step.py:6 reads u.whisper_lang",
            "jobs/job.py:2 imports * from engine.languages",
            "jobs/job.py:4 reads L.LANGUAGES",
        ],
    )
