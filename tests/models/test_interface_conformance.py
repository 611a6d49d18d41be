"""Every family's ``Encoder``, ``Decoder``, ``Aligner`` and ``Trainer`` against the protocols of
``engine.models.interface``, which declare what the pipelines call: each is built by the registry's loader from a
tiny random folder of every kind the registry writes (``engine.models.random_folder``; Whisper's is the suite's tiny
model), and ``conformance`` asks of it

- every member the protocol declares, a method where it declares one (with a signature that takes the protocol's call:
  its parameters in the same order and names, anything more with a default) and a value where it declares an
  attribute or a property;
- a decoder's optional members (``DecoderCaps.OPTIONAL``) there exactly when its caps have the capability;

and the heads a kind offers are those its caps and the registry say: a trainer where the decoder's caps have
``training``, an aligner where they have ``alignment_heads``. A planted class missing a member, one with a wrong
signature, a property written as a method and optional members against their caps show that the check can fail.
Nothing runs a model: loading the folders is the whole cost (about 10 s).
"""

import dataclasses
import inspect
import json

import pytest

from engine.errors import CheckpointError
from engine.models.family import FAMILIES
from engine.models.interface import Aligner, Decoder, DecoderCaps, Encoder, Trainer, TrainGraph
from engine.models.random_folder import kinds, write_random_folder

# whisper-turbo gives the classes whisper gives, from a folder of 19 MB: Whisper's are checked on the suite's tiny model
KINDS = [name for name in kinds() if name != "whisper-turbo"]


def protocol_members(protocol) -> dict[str, inspect.Signature | str]:
    """``name -> signature`` of the methods a protocol declares, ``name -> "attribute"`` or ``"property"`` of the
    rest."""
    members: dict[str, inspect.Signature | str] = {
        name: "attribute" for name in vars(protocol).get("__annotations__", {})
    }
    for name, value in vars(protocol).items():
        if name.startswith("_"):
            continue
        if isinstance(value, property):
            members[name] = "property"
        elif inspect.isfunction(value):
            members[name] = inspect.signature(value)
    return members


def signature_problem(declared: inspect.Signature, method) -> str | None:
    """Why ``method`` (bound) cannot take a call the protocol's ``declared`` signature allows, or None."""
    actual = list(inspect.signature(method).parameters.values())
    wanted = list(declared.parameters.values())[1:]  # self
    kinds_ = {inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD}
    names = [p.name for p in actual if p.kind not in kinds_]
    if [p.name for p in wanted] != names[: len(wanted)]:
        return f"takes ({', '.join(names)}), the protocol calls it with ({', '.join(p.name for p in wanted)})"
    extra = [p.name for p in actual[len(wanted) :] if p.kind not in kinds_ and p.default is inspect.Parameter.empty]
    return f"needs {', '.join(extra)} beyond the protocol's call" if extra else None


def conformance(obj, protocol) -> list[str]:
    """What ``obj`` lacks of ``protocol`` (module docstring), one line each; a ``Decoder``'s optional members are
    asked for exactly where its ``caps`` have their capability."""
    optional = {}
    if protocol is Decoder:
        optional = {m: (cap, getattr(obj.caps, cap)) for cap, ms in DecoderCaps.OPTIONAL.items() for m in ms}
    problems = []
    for name, declared in protocol_members(protocol).items():
        has = hasattr(obj, name)
        if name in optional:
            cap, wanted = optional[name]
            if has != wanted:
                problems.append(f"{name}: {'present' if has else 'missing'} while caps.{cap} is {wanted}")
            if not has:
                continue
        if not has:
            problems.append(f"{name}: missing")
        elif isinstance(declared, inspect.Signature):
            value = getattr(obj, name)
            problem = "not a method" if not inspect.ismethod(value) else signature_problem(declared, value)
            if problem:
                problems.append(f"{name}: {problem}")
        elif declared == "property" and inspect.ismethod(getattr(obj, name)):
            problems.append(f"{name}: a method, the protocol reads a value")
    return problems


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny_model_dir):
    """``kind -> folder`` of every kind checked (written once for the module)."""
    root = tmp_path_factory.mktemp("kinds")
    return {k: tiny_model_dir if k == "whisper" else write_random_folder(k, root / k).folder for k in KINDS}


def carries_decoder(family, folder) -> bool:
    """Whether the registry says the model in ``folder`` has a text decoder (``Family.store_heads``' rule)."""
    if family.decoder is None:
        return False
    if family.decoder_types is None:
        return True
    return json.loads((folder / "config.json").read_text()).get("model_type") in family.decoder_types


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_s_objects_conform_to_the_interface(kind, folders):
    family, _ = kinds()[kind]
    folder = folders[kind]
    problems = {"Encoder": conformance(family.load(folder), Encoder)}
    if not carries_decoder(family, folder):
        for head in (family.decoder, family.trainer):
            if head is not None:
                with pytest.raises(CheckpointError, match="no text decoder"):
                    head(folder)
        assert family.cross_attention is None
    else:
        decoder = family.decoder(folder)
        problems["Decoder"] = conformance(decoder, Decoder)
        if decoder.caps.training:
            trainer = family.trainer(folder)
            problems["Trainer"] = conformance(trainer, Trainer)
            problems["TrainGraph"] = conformance(trainer.split()[0], TrainGraph)
        elif family.trainer is not None:
            with pytest.raises(CheckpointError):
                family.trainer(folder)
        assert decoder.caps.alignment_heads == (family.cross_attention is not None)
        if decoder.caps.alignment_heads:
            problems["Aligner"] = conformance(family.cross_attention(folder), Aligner)
    problems = {k: v for k, v in problems.items() if v}
    assert not problems, f"{kind}'s {family.name} objects against engine.models.interface: {problems}"


def test_every_family_and_head_loader_is_checked(folders):
    """Every family writes a kind checked above, and a family with a decoder, trainer or aligner loader writes one
    that carries the decoder (so that the loaders are reached)."""
    for family in FAMILIES.values():
        mine = [k for k in KINDS if kinds()[k][0] is family]
        assert mine, f"{family.name} writes no random kind: its objects are not checked"
        if any(head is not None for head in (family.decoder, family.trainer, family.cross_attention)):
            assert any(carries_decoder(family, folders[k]) for k in mine), f"no {family.name} kind has its decoder"


# -- planted violations ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Planted:
    """A decoder with every member right (caps: no padding read, no final norm, no CTC head), to break one at a time."""

    caps: DecoderCaps = DecoderCaps(reads_padding=False, ln_post=False)
    name: str = "planted"
    sha256: str = "0" * 64
    n_layers_out: int = 3
    window_frames: int = 10
    manifest_extra: tuple = ()

    def same_store(self, info):
        return True

    def language(self, lang, decode_as):
        return lang

    def score_language(self, language):
        return None

    def prompt(self, task, language, extra=None):  # a parameter past the protocol's call, with a default: fine
        return []

    def search(self, memory, valid, task, languages, search):
        return [], [], []

    def text(self, ids):
        return ""


class _NoSearch(_Planted):
    search = None


class _WrongPrompt(_Planted):
    def prompt(self, language, task):
        return []


class _PromptNeedsMore(_Planted):
    def prompt(self, task, language, beam):
        return []


class _CtcWithoutCap(_Planted):
    def ctc(self, states, lengths, layer, ln_post):
        return [], []


@dataclasses.dataclass(frozen=True)
class _CapsWithoutMembers(_Planted):
    caps: DecoderCaps = DecoderCaps(ln_post=True, ctc=True)


class _MissingName:
    def same_store(self, info): ...


class _StoreDimsMethod:  # the Trainer's store_dims is a property: a method there is a bug the caller would compare
    def store_dims(self):
        return {}


def test_conformance_catches_planted_violations():
    assert conformance(_Planted(), Decoder) == []
    assert conformance(_NoSearch(), Decoder) == ["search: not a method"]
    assert conformance(_WrongPrompt(), Decoder) == [
        "prompt: takes (language, task), the protocol calls it with (task, language)"
    ]
    assert conformance(_PromptNeedsMore(), Decoder) == ["prompt: needs beam beyond the protocol's call"]
    assert conformance(_CtcWithoutCap(), Decoder) == ["ctc: present while caps.ctc is False"]
    assert conformance(_CapsWithoutMembers(), Decoder) == [
        "windows: missing while caps.reads_padding is True",
        "collate: missing while caps.reads_padding is True",
        "memories: missing while caps.reads_padding is True",
        "final_norm: missing while caps.ln_post is True",
        "ctc: missing while caps.ctc is True",
    ]
    missing = conformance(_MissingName(), Aligner)
    assert "name: missing" in missing and "same_store: missing" not in missing and "align: missing" in missing
    assert "store_dims: a method, the protocol reads a value" in conformance(_StoreDimsMethod(), Trainer)
