"""The `jsonl` task: the user's own files -> assets -> an env that loads them.

A small corpus is written into tmp_path; builds use tiny models so that each takes seconds.
"""

import json
import math

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import textenv  # noqa: F401  (registers TextGen-v0)
from reward_models.data import PreferenceDataError
from reward_models.user_data import (
    UserDataConfig,
    UserDataError,
    assign_splits,
    build_user_assets,
    choose_tokenizer,
)
from textenv.assets import load_tokenizer
from textenv.tasks import make_task
from textenv.tokenizer import BPETokenizer, WordTokenizer, load_tokenizer_file

pytest.importorskip("tokenizers")

COLORS = ["red", "green", "blue", "yellow", "black", "white"]
THINGS = ["car", "house", "bird", "cat", "boat"]
REWARD_MODULE = "jsonl_test_reward"
REWARD_SOURCE = """
def score(prompt, response):
    return float(prompt.split()[2] in response.split())

def broken(prompt, response):
    raise RuntimeError("boom")

def not_a_number(prompt, response):
    return "high"

NOT_CALLABLE = 3
"""


def demo(prompt: str) -> str:
    color, thing = prompt.split()[2:4]
    return f"the {thing} is {color} and nice ."


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_data(d):
    """prompts.jsonl (no splits), demos.jsonl, prefs.jsonl (pairwise and ranked),
    corpus.jsonl and the reward module, in directory d."""
    rng = np.random.default_rng(0)
    prompts = [f"describe a {c} {t} :" for c in COLORS for t in THINGS]
    write_jsonl(d / "prompts.jsonl", [{"prompt": p} for p in prompts])
    write_jsonl(d / "demos.jsonl", [{"prompt": p, "response": demo(p)} for p in prompts])
    prefs = []
    for i, p in enumerate(prompts):
        color, thing = p.split()[2:4]
        bad = f"the {thing} is {COLORS[(COLORS.index(color) + 1) % len(COLORS)]} ."
        if i % 2:
            prefs.append({"prompt": p, "chosen": demo(p), "rejected": bad})
        else:
            prefs.append({"prompt": p, "responses": [bad, demo(p), "the ."], "ranking": [1, 0, 2]})
    write_jsonl(d / "prefs.jsonl", prefs)
    docs = [prompts[i] + " " + demo(prompts[i]) for i in rng.integers(len(prompts), size=120)]
    write_jsonl(d / "corpus.jsonl", [{"text": t} for t in docs])
    (d / f"{REWARD_MODULE}.py").write_text(REWARD_SOURCE)
    return d


def tiny(d, out, **kw) -> UserDataConfig:
    """A build config of tiny models over the files of write_data(d)."""
    args = dict(prompts=d / "prompts.jsonl", out_dir=out, demos=d / "demos.jsonl",
                n_layer=1, n_head=2, n_embd=32, pretrain_steps=40, sft_steps=30, batch_size=16,
                calibration_samples=32, eval_samples=8)
    args.update(kw)
    cfg = UserDataConfig(**args)
    cfg.rm.epochs = 2
    return cfg


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = write_data(tmp_path_factory.mktemp("data"))
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(d))  # the reward module is importable, as for a user
        yield d


@pytest.fixture(scope="module")
def word_build(data, tmp_path_factory):
    """Word-level build with the callable and a reward model from the preferences."""
    out = tmp_path_factory.mktemp("word") / "assets"
    quality = build_user_assets(tiny(data, out, corpus=data / "corpus.jsonl",
                                     preferences=data / "prefs.jsonl",
                                     reward=f"{REWARD_MODULE}:score"))
    return out, quality


@pytest.fixture(scope="module")
def bpe_build(data, tmp_path_factory):
    """BPE build without a callable (no gold), no corpus, with preferences."""
    out = tmp_path_factory.mktemp("bpe") / "assets"
    quality = build_user_assets(tiny(data, out, tokenizer="bpe", bpe_vocab_size=300,
                                     preferences=data / "prefs.jsonl"))
    return out, quality


# ---- the BPE tokenizer -----------------------------------------------------------------------
TEXTS = ["Hello, world! How are you?", "I'm fine:  thanks.\nNew line: é ü 😀",
         "write a poem about cats <eos>"] * 10


def test_bpe_round_trips_text_and_keeps_eos_a_word(tmp_path):
    tok = BPETokenizer.train(TEXTS, vocab_size=320)
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert 260 < tok.vocab_size <= 320
    for text in ["Hello, world!", "naïve 中文  spaces\tand\nlines", "unseen ☃ text", ""]:
        assert tok.decode(tok.encode(text)) == text
    ids = tok.encode("How are you? <eos>")
    assert ids[-1] == tok.eos_id and tok.eos_id not in ids[:-1]
    assert tok.decode([tok.bos_id] + ids + [tok.pad_id]) == "How are you? <eos>"
    assert ids[:-1] == tok.encode("How are you?")  # the space before <eos> is no token
    with pytest.raises(ValueError, match="outside"):
        tok.decode([tok.vocab_size])


def test_tokenizer_files_load_as_their_own_kind_and_bpe_training_is_deterministic(tmp_path):
    BPETokenizer.train(TEXTS, vocab_size=300).save(tmp_path / "a.json")
    BPETokenizer.train(TEXTS, vocab_size=300).save(tmp_path / "b.json")
    assert (tmp_path / "a.json").read_text() == (tmp_path / "b.json").read_text()
    WordTokenizer(["a", "b"]).save(tmp_path / "w.json")
    assert isinstance(load_tokenizer_file(tmp_path / "a.json"), BPETokenizer)
    assert isinstance(load_tokenizer_file(tmp_path / "w.json"), WordTokenizer)
    (tmp_path / "bad.json").write_text('{"type": "other"}')
    with pytest.raises(ValueError, match="bad.json"):
        load_tokenizer_file(tmp_path / "bad.json")


def test_auto_tokenizer_rule():
    tok, why = choose_tokenizer(["a b c", "c d <eos>"], "auto", 10, 300)
    assert isinstance(tok, WordTokenizer) and tok.vocab_size == 4 + 4 and "closed" in why
    tok, why = choose_tokenizer(["a  b", "c"], "auto", 10, 300)  # two spaces: not word text
    assert isinstance(tok, BPETokenizer) and "single spaces" in why
    tok, why = choose_tokenizer(["a b c d"], "auto", 3, 300)  # too many words
    assert isinstance(tok, BPETokenizer) and "word_vocab_limit" in why
    assert isinstance(choose_tokenizer(["a b"], "bpe", 10, 300)[0], BPETokenizer)
    assert isinstance(choose_tokenizer(["a\nb"], "word", 10, 300)[0], WordTokenizer)
    with pytest.raises(ValueError, match="valid: 'auto', 'word', 'bpe'"):
        choose_tokenizer(["a"], "chars", 10, 300)


# ---- prompts and splits ----------------------------------------------------------------------
def test_split_rule_is_stable_and_complete(tmp_path):
    path = tmp_path / "p.jsonl"
    rows = [(f"prompt {i}", None, i + 1) for i in range(30)] + [("held", "eval", 31)]
    splits = assign_splits(rows, path)
    assert splits["eval"] == ["held"]  # an explicit eval split takes no unsplit prompts
    assert len(splits["test"]) == 3 and len(splits["train"]) == 27
    again = assign_splits(list(reversed(rows)), path)  # file order does not matter
    assert set(again["test"]) == set(splits["test"])
    with pytest.raises(ValueError, match="split 'eval' has no prompts"):
        assign_splits([("a", "train", 1), ("b", "test", 2)], path)
    with pytest.raises(UserDataError, match=r"p.jsonl:2: prompt 'a' appears earlier"):
        assign_splits([("a", "train", 1), ("a", "test", 2)], path)


BAD_PROMPT_LINES = [
    ("not json", "invalid JSON"),
    ('{"text": "hi"}', "missing key 'prompt'"),
    ('{"prompt": 3}', "'prompt' must be a str, got int"),
    ('{"prompt": "hi", "split": "dev"}', "unknown split 'dev'; valid: 'train', 'eval', 'test'"),
    ('{"prompt": "hi", "spilt": "eval"}', "unexpected key 'spilt'"),
    ('{"prompt": "hi <eos> there"}', "special token <eos>"),
    ('["hi"]', "expected a JSON object"),
]


@pytest.mark.parametrize("line, message", BAD_PROMPT_LINES)
def test_bad_prompt_lines_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "fine"}\n\n' + line + "\n")
    with pytest.raises(UserDataError, match="prompts.jsonl:3: ") as e:
        build_user_assets(UserDataConfig(prompts=path, out_dir=tmp_path / "out"))
    assert message in str(e.value)
    assert not (tmp_path / "out").exists()


def test_bad_demo_corpus_and_preference_lines_name_file_and_line(data, tmp_path):
    cases = {"demos": ('{"prompt": "hi"}', "demos.jsonl:2: missing key 'response'"),
             "corpus": ('{"text": ["a"]}', "corpus.jsonl:2: 'text' must be a str"),
             "preferences": ('{"prompt": "a", "chosen": "b"}', "prefs.jsonl:2: missing key")}
    for flag, (line, message) in cases.items():
        name = "prefs.jsonl" if flag == "preferences" else f"{flag}.jsonl"
        path = tmp_path / name
        path.write_text((data / name).read_text().splitlines()[0] + "\n" + line + "\n")
        with pytest.raises((UserDataError, PreferenceDataError)) as e:
            build_user_assets(tiny(data, tmp_path / "out", **{flag: path}))
        assert message in str(e.value), (flag, str(e.value))
    assert not (tmp_path / "out").exists()
    with pytest.raises(FileNotFoundError, match="--corpus file not found"):
        build_user_assets(tiny(data, tmp_path / "out", corpus=tmp_path / "nope.jsonl"))


@pytest.mark.parametrize("spec, message", [
    ("no_such_module_xyz:score", "cannot import module 'no_such_module_xyz': "
                                 "ModuleNotFoundError"),
    (f"{REWARD_MODULE}:missing", "has no 'missing'"),
    (f"{REWARD_MODULE}:NOT_CALLABLE", "is a int, not callable"),
    (f"{REWARD_MODULE}:broken", "failed on a test call"),
    (f"{REWARD_MODULE}", "must be written module:function"),
])
def test_bad_reward_callable_names_the_spec(data, tmp_path, spec, message):
    with pytest.raises(ValueError, match="reward callable") as e:
        build_user_assets(tiny(data, tmp_path / "out", reward=spec))
    assert spec in str(e.value) and message in str(e.value)
    assert not (tmp_path / "out").exists()


def test_a_failed_build_leaves_the_out_dir_as_it_was(data, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "task.json").write_text("previous build")

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    # Fails in the last stage, after the tokenizer, the models and task.json were written.
    monkeypatch.setattr("reward_models.user_data.train_reward_model", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        build_user_assets(tiny(data, out, preferences=data / "prefs.jsonl"))
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no hidden build left behind
    assert [p.name for p in out.iterdir()] == ["task.json"]
    assert (out / "task.json").read_text() == "previous build"
    (out / "notes.txt").write_text("mine")
    (out / "task.json").unlink()
    with pytest.raises(ValueError, match="holds no jsonl build"):
        build_user_assets(tiny(data, out))


def test_cli_build_assets_task_jsonl_is_the_jsonl_build(tmp_path):
    from agents.cli import main

    path = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": 1}])
    with pytest.raises(UserDataError, match="prompts.jsonl:1: 'prompt' must be a str"):
        main(["build-assets", "--task", "jsonl", "--prompts", str(path),
              "--out-dir", str(tmp_path / "out")])


# ---- the built envs --------------------------------------------------------------------------
def run_episode(env, seed=0):
    obs, info = env.reset(seed=seed)
    terminated = False
    while not terminated:
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    return reward, info


def test_word_build_loads_with_learned_and_gold_rewards(word_build, data):
    out, quality = word_build
    for name in ("tokenizer.json", "base.safetensors", "sft.json", "reward.json", "task.json",
                 "quality.json", "build_config.json", "corpus.jsonl"):
        assert (out / name).is_file(), name
    assert isinstance(load_tokenizer(out), WordTokenizer)
    assert quality["tokenizer"] == "word" and quality["preference_records"] == 30
    assert (quality["prompts_train"], quality["prompts_eval"], quality["prompts_test"]) == \
        (24, 3, 3)
    assert 0.0 <= quality["sft_gold_mean"] <= 1.0 and quality["rm_val_accuracy"] is not None
    assert json.loads((out / "quality.json").read_text()) == quality

    env = gym.make("TextGen-v0", task="jsonl", assets_dir=out)  # reward="learned"
    check_env(env.unwrapped, skip_render_check=True)
    reward, info = run_episode(env)
    assert reward == info["reward_model_score"]
    from jsonl_test_reward import score
    assert info["gold_score"] == score(info["prompt"], info["response"])

    gold = gym.make("TextGen-v0", task="jsonl", assets_dir=out, reward="gold",
                    prompt_split="test")
    obs, info = gold.reset(options={"prompt": "describe a red car :"})
    for word in "the car is red <eos>".split():
        obs, reward, terminated, _, info = gold.step(gold.unwrapped.tokenizer.encode(word)[0])
    assert terminated and info["response"] == "the car is red <eos>" and reward == 1.0
    with pytest.raises(ValueError, match="unknown word 'purple'"):
        gold.reset(options={"prompt": "describe a purple car :"})


def test_bpe_build_without_a_callable_has_no_gold(bpe_build):
    out, quality = bpe_build
    tokenizer = load_tokenizer(out)
    assert isinstance(tokenizer, BPETokenizer) and quality["tokenizer"] == "bpe"
    assert quality["vocab_size"] == tokenizer.vocab_size and "sft_gold_mean" not in quality
    assert quality["corpus_documents"] == 0  # pretrained on the other files' texts
    env = gym.make("TextGen-v0", task="jsonl", assets_dir=out)
    check_env(env.unwrapped, skip_render_check=True)
    reward, info = run_episode(env, seed=3)
    assert math.isfinite(reward) and math.isnan(info["gold_score"])
    assert not env.unwrapped.task.has_gold
    with pytest.raises(ValueError, match="needs a gold scorer.*--reward module:function"):
        gym.make("TextGen-v0", task="jsonl", assets_dir=out, reward="gold")
    # A prompt round-trips through the env's tokens.
    prompt = "describe a white boat :"
    obs, _ = env.reset(options={"prompt": prompt})
    assert tokenizer.decode(obs[obs != tokenizer.pad_id]) == prompt


def test_the_task_needs_its_assets_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="pass assets_dir="):
        gym.make("TextGen-v0", task="jsonl")
    with pytest.raises(FileNotFoundError, match="task.json"):
        gym.make("TextGen-v0", task="jsonl", assets_dir=tmp_path)
    (tmp_path / "task.json").write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="not a jsonl task file"):
        make_task("jsonl", tmp_path)


@pytest.mark.slow
def test_ppo_trains_on_a_jsonl_build(word_build, tmp_path):
    from agents.ppo import PPOConfig, train

    out, _ = word_build
    result = train(PPOConfig(task="jsonl", assets_dir=str(out), reward="gold",
                             total_env_steps=300, num_envs=16, max_new_tokens=10,
                             eval_samples=1, run_dir=str(tmp_path / "ppo")))
    assert math.isfinite(result["final"]["eval/gold_mean"])
    assert (tmp_path / "ppo" / "metrics.csv").is_file()
