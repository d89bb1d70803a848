"""Multi-turn mode of the env core (the `dialogue` task): turns, user replies, masks,
episode ends, checkers, vector = N single envs across turns, KV-cache prefill of replies."""

import copy
import math
from dataclasses import replace

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import text_reward
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_vector_env import assert_infos_equal, assert_same_trajectories, check_obs, sync_reference

import textenv  # noqa: F401  (registers the ids)
from textenv.decoding import PolicyDecoder
from textenv.env import TextGenEnv
from textenv.model import GPT, GPTConfig
from textenv.pipeline import build_tokenizer
from textenv.tasks.dialogue import DialogueTask
from textenv.vector_env import TextGenVectorEnv
from textenv.wrappers import (
    KLPenalty,
    TextActions,
    TurnRewards,
    VectorKLPenalty,
    VectorTurnRewards,
)

TASK = DialogueTask()


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tokenizer and a tiny random reference policy: fast, and independent of the
    shipped assets."""
    directory = tmp_path_factory.mktemp("dialogue_assets")
    tokenizer = build_tokenizer(TASK)
    tokenizer.save(directory / "tokenizer.json")
    torch.manual_seed(0)
    GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=80, n_layer=2, n_head=2,
                  n_embd=16)).save(directory, "sft")
    return directory


def make(assets, **kw) -> TextGenEnv:
    kw.setdefault("reward", "gold")
    return TextGenEnv(task="dialogue", assets_dir=assets, **kw)


def say(env, text: str):
    """Step the env through the words of `text`; returns the last step's results."""
    tok = env.unwrapped.tokenizer
    for word in text.split():
        out = env.step(tok.encode(word)[0])
    return out


def test_best_dialogue_succeeds_with_gold_one_and_agent_mask(assets):
    env = make(assets, observation_mode="dict")
    obs, info = env.reset(seed=3)
    state = copy.deepcopy(env.unwrapped.core.states[0])
    best = TASK.play(info["prompt"], np.random.default_rng(0), None, state=state)
    agent_turns = [t for role, t in TASK.split_transcript(best) if role == "agent"]
    for k, turn in enumerate(agent_turns):
        obs, reward, terminated, truncated, info = say(env, turn)
        assert info["turn"] == k + 1
        assert terminated == (k == len(agent_turns) - 1) and not truncated
    assert info["outcome"] == "success" and reward == 1.0 and info["gold_score"] == 1.0
    assert info["response"] == best and info["turns"] == len(agent_turns)
    assert [t for _, t in info["transcript"]] == [t for _, t in TASK.split_transcript(best)]
    # The agent mask covers exactly the agent's words; the prompt and replies are context.
    tok = env.unwrapped.tokenizer
    ids, agent = obs["input_ids"], obs["agent_mask"].astype(bool)
    agent_words = tok.decode(ids[agent]).split()
    assert agent_words == " ".join(agent_turns).split()
    assert not (agent & obs["prompt_mask"].astype(bool)).any()
    assert env.observation_space.contains(obs)


def test_wrong_guess_fails_and_turn_limit_ends(assets):
    env = make(assets)
    env.reset(seed=0, options={"prompt": "customer : i want a red phone ."})
    target = env.unwrapped.core.states[0].target
    wrong = "large" if target.size == "small" else "small"
    *_, reward, terminated, _, info = say(env, f"try the {wrong} red phone . <eos>")
    assert terminated and info["outcome"] == "failure" and reward == 0.0
    assert info["response"].endswith("customer : no thanks .")

    env.reset(seed=0)
    for k in range(TASK.max_turns):
        *_, terminated, _, info = say(env, "which size ? <eos>")
        assert terminated == (k == TASK.max_turns - 1)
    assert info["outcome"] == "turn_limit" and info["gold_score"] == 0.0


def test_cut_off_turn_gets_a_reply_and_never_an_unbounded_episode(assets):
    env = make(assets)
    env.reset(seed=1)
    *_, info = say(env, " ".join(["which"] * TASK.max_turn_tokens))  # no <eos>: cut off
    assert info["user_reply"] == "customer : sorry ?" and info["turn"] == 1
    rng = np.random.default_rng(0)
    steps, terminated = 0, False
    while not terminated:  # random tokens: the turn limit ends it
        _, _, terminated, _, info = env.step(int(rng.integers(env.action_space.n)))
        steps += 1
    assert steps <= env.unwrapped.max_new_tokens
    assert info["outcome"] in ("turn_limit", "length", "failure", "success")


def test_multi_turn_needs_room_for_a_turn_and_reply(assets):
    with pytest.raises(ValueError, match="no room for one turn and reply"):
        make(assets, max_new_tokens=5)


@pytest.mark.filterwarnings("ignore:.*different from the unwrapped version")
@pytest.mark.parametrize("observation_mode", ["box", "dict"])
def test_env_checkers(assets, observation_mode):
    from gymnasium.utils.env_checker import check_env as gym_check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = KLPenalty(make(assets, observation_mode=observation_mode), kl_coef=0.1)
    gym_check_env(env)
    sb3_check_env(env)
    gym_check_env(gym.make("TextGen-Dialogue-v0", reward="gold", assets_dir=assets))


@pytest.mark.parametrize("kw", [{}, {"observation_mode": "dict"}])
def test_vector_equals_single_envs_across_turns(assets, kw):
    kw = {"task": "dialogue", "assets_dir": assets, "reward": text_reward, **kw}
    vec = TextGenVectorEnv(4, **kw)
    ref = sync_reference(4, **kw)
    resets = assert_same_trajectories(vec, ref, steps=150)
    assert resets >= 4  # several dialogues ended (and autoreset) mid-run


def test_vector_kl_equals_single_kl_and_a_full_forward_across_turns(assets):
    """The reference log-probs of the KV-cache tracker (user replies prefilled) equal a
    full forward of the whole dialogue, and the vector wrapper equals single wrappers."""
    kw = {"task": "dialogue", "assets_dir": assets, "reward": "gold"}
    vec = VectorKLPenalty(TextGenVectorEnv(3, **kw), kl_coef=0.2)
    ref = gym.vector.SyncVectorEnv([lambda: KLPenalty(TextGenEnv(**kw), kl_coef=0.2)
                                    for _ in range(3)])
    assert_same_trajectories(vec, ref, steps=120)

    model = GPT.load(assets, "sft")
    env = KLPenalty(make(assets), kl_coef=0.2)
    obs, _ = env.reset(seed=2)
    rng = np.random.default_rng(1)
    eos, replies = env.unwrapped.tokenizer.eos_id, 0
    for _ in range(60):
        total = int(env.unwrapped.core.prompt_len[0] + env.unwrapped.core.resp_len[0])
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.from_numpy(obs[None, :total]))[0, -1], -1)
        a = eos if rng.random() < 0.3 else int(rng.integers(4, env.action_space.n))
        obs, _, terminated, _, info = env.step(a)
        assert info["ref_logprob"] == pytest.approx(float(logp[a]), abs=1e-4)
        replies += "user_reply" in info
        if terminated:
            obs, _ = env.reset()
    assert replies >= 5


def test_policy_decoder_prefills_replies_without_recomputing(assets):
    model = GPT.load(assets, "sft")
    envs = TextGenVectorEnv(3, task="dialogue", assets_dir=assets, reward="gold",
                            observation_mode="dict")
    decoder = PolicyDecoder(model, 3)
    obs, _ = envs.reset(seed=0)
    rng = np.random.default_rng(0)
    eos = envs.tokenizer.eos_id
    for _ in range(50):
        logits = decoder.next_logits(obs)
        for i in range(3):
            total = int(obs["attention_mask"][i].sum())
            with torch.no_grad():
                full = model(torch.from_numpy(obs["input_ids"][i:i + 1, :total]))[0, -1]
            finite = torch.isfinite(logits[i])
            torch.testing.assert_close(logits[i][finite], full[finite], atol=1e-4, rtol=1e-4)
        actions = np.where(rng.random(3) < 0.3, eos, rng.integers(4, envs.tokenizer.vocab_size,
                                                                     3))
        obs, *_ = envs.step(actions)
    check_obs(obs, envs.core.observations("dict"))


def test_reply_prefill_feeds_only_the_new_tokens(assets):
    """After the first prefill, the reference runs on the new tokens only (one action, or an
    action and the user's reply), except when its cache is full and it compacts."""
    calls = []
    model = GPT.load(assets, "sft")
    forward = model.forward

    def recording(input_ids, attention_mask=None, position_ids=None, kv_cache=None):
        calls.append((input_ids.shape[1], kv_cache.length if kv_cache is not None else -1))
        return forward(input_ids, attention_mask, position_ids, kv_cache)

    model.forward = recording
    envs = VectorKLPenalty(TextGenVectorEnv(3, task="dialogue", assets_dir=assets,
                                            reward="gold"), reference=model)
    envs.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(40):
        actions = np.where(rng.random(3) < 0.4, envs.unwrapped.tokenizer.eos_id, 4)
        envs.step(actions)
    widths = [t for t, length in calls if length > 0]  # calls that extend a filled cache
    assert max(widths) <= 1 + TASK.max_reply_tokens
    assert any(t > 1 for t in widths)  # some replies were prefilled incrementally


vector_reset = st.tuples(st.just("reset"), st.integers(0, 2**31 - 1),
                         st.one_of(st.none(), st.sampled_from(TASK.prompts("eval")[:5])))
# Actions: <eos> often (turns end), the words of good turns, and any other in-space id.
WORDS = ["which", "size", "color", "kind", "?", "try", "the", "small", "red", "phone", "."]
vector_step = st.tuples(st.just("step"), st.lists(
    st.one_of(st.just(-1), st.sampled_from(WORDS), st.integers(0, 10**4)),
    min_size=3, max_size=3), st.none())


@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(kl=st.booleans(), observation_mode=st.sampled_from(["box", "dict"]),
       program=st.lists(st.one_of(vector_reset, *[vector_step] * 10), min_size=40,
                        max_size=80))
def test_fuzz_vector_equals_single_envs_across_turns(assets, kl, observation_mode, program):
    kw = dict(task="dialogue", reward="gold", observation_mode=observation_mode,
              assets_dir=assets)
    vec = TextGenVectorEnv(3, **kw)
    sync = gym.vector.SyncVectorEnv([lambda: TextGenEnv(**kw) for _ in range(3)])
    if kl:
        vec = VectorKLPenalty(vec, kl_coef=0.1)
        sync.envs = [KLPenalty(e, kl_coef=0.1) for e in sync.envs]
    tok = vec.unwrapped.tokenizer
    V = tok.vocab_size
    (o1, _), (o2, _) = vec.reset(seed=0), sync.reset(seed=0)
    for op, a, b in program:
        if op == "reset":
            options = {"prompt": b} if b else None
            (o1, i1), (o2, i2) = vec.reset(seed=a, options=options), sync.reset(seed=a,
                                                                                options=options)
            check_obs(o1, o2)
            continue
        actions = np.array([tok.eos_id if x == -1 else tok.encode(x)[0] if isinstance(x, str)
                            else x % V for x in a])
        o1, r1, t1, _, i1 = vec.step(actions)
        o2, r2, t2, _, i2 = sync.step(actions)
        check_obs(o1, o2)
        assert vec.observation_space.contains(o1)
        np.testing.assert_allclose(r1, r2, atol=1e-5)
        np.testing.assert_array_equal(t1, t2)
        assert_infos_equal(i1, i2)
        for i in np.flatnonzero(t1):
            assert 0.0 <= i1["gold_score"][i] <= 1.0
            assert i1["turns"][i] <= TASK.max_turns
            assert i1["outcome"][i] in ("success", "failure", "turn_limit", "length")


# ---- whole turns as text actions -----------------------------------------------------------
def test_text_actions_play_whole_turns_with_the_same_rewards(assets):
    env = TextActions(make(assets))
    assert isinstance(env.action_space, gym.spaces.Text)
    obs, info = env.reset(seed=4)
    state = copy.deepcopy(env.unwrapped.core.states[0])
    best = TASK.play(info["prompt"], np.random.default_rng(0), None, state=state)
    agent_turns = [t for role, t in TASK.split_transcript(best) if role == "agent"]
    token_env = make(assets)
    token_env.reset(seed=4)
    for turn in agent_turns:
        text = turn.removesuffix(" <eos>")  # the wrapper ends the turn itself
        obs, reward, terminated, _, info = env.step(text)
        obs2, reward2, terminated2, _, info2 = say(token_env, turn)
        np.testing.assert_array_equal(obs, obs2)
        assert (reward, terminated) == (reward2, terminated2)
        assert info["tokens"] == len(turn.split())
    assert terminated and reward == 1.0 and info["gold_score"] == 1.0


def test_text_actions_accept_any_text_of_the_space(assets):
    env = TextActions(KLPenalty(make(assets), kl_coef=0.1))
    env.reset(seed=0)
    _, reward, terminated, _, info = env.step("which colour ?")  # unknown word -> <unk>
    assert info["user_reply"] == "customer : sorry ?" and not terminated
    assert info["tokens"] == 4 and np.isfinite(reward)
    long = " ".join(["which"] * 10)  # longer than a turn: the env cuts it, the rest is dropped
    _, _, _, _, info = env.step(long)
    assert info["tokens"] == TASK.max_turn_tokens and info["turn"] == 2
    with pytest.raises(ValueError, match="outside the action space"):
        env.step(123)
    with pytest.raises(ValueError, match="outside the action space"):
        env.step("WHICH")  # characters no task word uses


@pytest.mark.filterwarnings("ignore:.*different from the unwrapped version")
def test_text_actions_pass_the_env_checker_single_and_multi_turn(assets):
    from gymnasium.utils.env_checker import check_env as gym_check_env

    gym_check_env(TextActions(make(assets)))
    reviews = TextActions(TextGenEnv(task="reviews", reward="gold"))
    gym_check_env(reviews)
    _, info = reviews.reset(seed=0)
    best = reviews.unwrapped.task.best_response(info["prompt"], np.random.default_rng(0))
    _, reward, terminated, _, info = reviews.step(best)
    assert terminated and reward == info["gold_score"] == 1.0


def test_sb3_ppo_runs_on_dialogues(assets):
    """A short stable-baselines3 PPO run (MLP on the token ids) across turns: it trains and
    finishes dialogues without any conversion of the env."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.monitor import Monitor

    env = Monitor(make(assets))
    model = PPO("MlpPolicy", env, n_steps=128, batch_size=64, n_epochs=1, seed=0, device="cpu")
    model.learn(total_timesteps=256)
    assert len(env.get_episode_rewards()) >= 2
    assert all(0.0 <= r <= 1.0 for r in env.get_episode_rewards())


# ---- agents on dialogues ---------------------------------------------------------------------
def test_dialogue_rollout_marks_agent_tokens_and_its_logprobs_match_a_full_forward(assets):
    from agents.ppo import (
        ActorCritic,
        PPOConfig,
        advantages_and_returns,
        old_logprobs_and_values,
        per_token_rewards,
    )
    from agents.rollout import collect_rollout, make_envs, response_logprobs

    envs = make_envs(6, task="dialogue", reward="gold", assets_dir=assets)
    policy = GPT.load(assets, "sft")
    tok = envs.unwrapped.tokenizer
    prompts = TASK.prompts("train")[:6]
    ro = collect_rollout(envs, policy, prompts, max_new_tokens=65, temperature=1.0,
                         generator=torch.Generator().manual_seed(0), pad_id=tok.pad_id)
    assert ro.agent_mask is not None and ro.num_tokens == int(ro.agent_mask.sum())
    for i in range(6):
        ids = ro.response_ids[i][ro.response_mask[i]].tolist()
        assert tok.decode(ids) == ro.responses[i]
        # The other tokens are the customer's replies (and the <eos> the env adds to a turn
        # cut off at the limit).
        user = ro.response_ids[i][ro.response_mask[i] & ~ro.agent_mask[i]].tolist()
        replies = [t for role, t in TASK.split_transcript(ro.responses[i]) if role == "user"]
        assert [w for w in tok.decode(user).split() if w != "<eos>"] == " ".join(replies).split()
    # The rollout's log-probs (KV cache, replies prefilled) equal one full forward.
    full = response_logprobs(policy, ro, 1.0)  # (N, T), 0 off the agent's tokens
    torch.testing.assert_close(ro.sample_logprobs, full, atol=1e-4, rtol=1e-4)
    assert (ro.sample_logprobs[~ro.agent_mask] == 0).all()
    # PPO: log-probs, values, rewards and advantages live on the agent's tokens only.
    agent = ActorCritic(policy)
    mask = ro.action_mask.float()
    old_logp, values = old_logprobs_and_values(agent, ro, mask, 1.0)
    rewards, _ = per_token_rewards(ro.scores, old_logp, full, mask, 0.1, "k1")
    advantages, returns = advantages_and_returns(rewards, values, mask, PPOConfig())
    user = ro.response_mask & ~ro.agent_mask
    assert user.any()
    for x in (old_logp, values, rewards, advantages, returns):
        assert (x[user] == 0).all()


@pytest.mark.parametrize("algo", ["ppo", "grpo", "rloo"])
def test_lm_agents_train_on_dialogues(assets, tmp_path, algo):
    from agents import ALGORITHMS

    cls, train = ALGORITHMS[algo]
    cfg = replace(cls(), run_dir=str(tmp_path / algo), task="dialogue", assets_dir=str(assets),
                  reward="gold", normalize_reward=False, num_envs=8, max_new_tokens=65,
                  eval_samples=1, eval_every=0,
                  threads=1, progress=False, tensorboard=False, total_env_steps=2 * 8 * 20)
    result = train(cfg)
    final = result["final"]
    assert 0.0 <= final["eval/gold_mean"] <= 1.0 and math.isfinite(final["eval/kl"])
    assert all(math.isfinite(row["env/gold_mean"]) for row in result["history"])


# ---- per-turn rewards ------------------------------------------------------------------------
def test_turn_rewards_sum_to_the_final_score_and_vector_equals_single(assets):
    env = TurnRewards(make(assets, reward=text_reward))
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    eos, total, turn_rewards, episodes = env.unwrapped.tokenizer.eos_id, 0.0, 0, 0
    while episodes < 5:
        a = eos if rng.random() < 0.3 else int(rng.integers(4, env.action_space.n))
        _, reward, terminated, _, info = env.step(a)
        total += reward
        turn_rewards += "turn_score" in info and reward != 0
        if terminated:
            assert total == pytest.approx(info["reward_model_score"])
            total, episodes = 0.0, episodes + 1
            env.reset()
    assert turn_rewards >= 3  # credit came before the end
    with pytest.raises(ValueError, match="multi-turn task"):
        TurnRewards(TextGenEnv(task="reviews", reward="gold"))

    kw = {"task": "dialogue", "assets_dir": assets, "reward": text_reward}
    vec = VectorTurnRewards(TextGenVectorEnv(3, **kw))
    ref = gym.vector.SyncVectorEnv([lambda: TurnRewards(TextGenEnv(**kw)) for _ in range(3)])
    assert_same_trajectories(vec, ref, steps=120)
