"""Pixel observations: goal images, the CNN encoder, random-crop augmentation."""
import numpy as np
import pytest
import torch
from tensordict import TensorDict

from conftest import build_agent, build_loss_module, check_config, needs_rendering
from contrastive_rl.errors import ConfigError
from contrastive_rl.envs.goal_envs import apply_env_transforms, env_maker
from contrastive_rl.data.augmentation import RandomShiftCrop
from contrastive_rl.envs.pixels import make_pixel_gym_env
from contrastive_rl.modules.encoders import PixelEncoder


@needs_rendering
def test_goal_image_is_the_scene_with_the_ball_at_the_goal():
    env = make_pixel_gym_env("PointMaze_UMaze-v3", 50, 48)
    observation, _ = env.reset(seed=3)
    assert observation["pixels"].shape == (48, 48, 3) and observation["pixels"].dtype == np.uint8
    assert not np.array_equal(observation["pixels"], observation["goal_pixels"])
    point = env.unwrapped.point_env
    import mujoco

    point.data.qpos[:2] = observation["desired_goal"]
    point.data.qvel[:] = 0
    mujoco.mj_forward(point.model, point.data)
    np.testing.assert_array_equal(env.render(), observation["goal_pixels"])
    # The red target marker is hidden: the goal shows only through goal_pixels.
    assert point.model.site_rgba[env.unwrapped.target_site_id, 3] == 0
    env.close()


@needs_rendering
def test_each_env_renders_its_own_scene_when_several_render_in_one_process():
    from contrastive_rl.envs.videos import make_video_gym_env

    maze = make_pixel_gym_env("PointMaze_UMaze-v3", 10, 48)
    alone = maze.reset(seed=0)[0]["pixels"]
    fetch = make_video_gym_env("FetchReach-v4", 10, 48)
    fetch.reset(seed=0)
    fetch_alone = fetch.render()
    for _ in range(2):  # alternate: each render follows the other env's
        assert np.array_equal(maze.render(), alone)
        assert np.array_equal(fetch.render(), fetch_alone)
    fetch.close()  # frees the context that was current last
    assert np.array_equal(maze.render(), alone)
    maze.close()


@needs_rendering
def test_pixel_env_through_torchrl_keeps_uint8_images_and_a_fixed_goal_image():
    env = apply_env_transforms(env_maker("PointMaze_UMaze-v3", 6, from_pixels=True, image_size=48))
    env.set_seed(0)
    rollout = env.rollout(6)
    assert rollout["pixels"].shape == (6, 48, 48, 3) and rollout["pixels"].dtype == torch.uint8
    assert (rollout["goal_pixels"] == rollout["goal_pixels"][:1]).all()
    assert rollout["next", "success"].shape == (6, 1)
    assert rollout["observation"].dtype == torch.float32
    env.close()


def coordinate_images(batch, size=12):
    """Image whose pixel (h, w) holds (h, w, sample): a crop's offset can be read back from it."""
    h = torch.arange(size).view(1, size, 1).expand(batch, size, size)
    w = torch.arange(size).view(1, 1, size).expand(batch, size, size)
    b = torch.arange(batch).view(batch, 1, 1).expand(batch, size, size)
    return torch.stack([h, w, b], -1).to(torch.uint8)


def test_random_crop_shares_the_offset_between_observation_and_goal():
    torch.manual_seed(0)
    images = coordinate_images(256)
    batch = TensorDict(pixels=images.clone(), goal_pixels=images.clone(), batch_size=[256])
    out = RandomShiftCrop(["pixels", "goal_pixels"], pad=4, prob=0.5)(batch)
    torch.testing.assert_close(out["pixels"], out["goal_pixels"])
    shift = out["crop_shift"]
    assert shift.abs().max() <= 4
    # The pixel at (h, w) comes from (h + dy, w + dx) clamped to the image: replicate padding.
    h = torch.arange(12)
    expected_rows = (h + shift[:, :1]).clamp(0, 11)
    expected_cols = (h + shift[:, 1:]).clamp(0, 11)
    assert (out["pixels"][..., 0][:, :, 0].long() == expected_rows).all()
    assert (out["pixels"][..., 1][:, 0, :].long() == expected_cols).all()
    assert (out["pixels"][..., 2].long() == torch.arange(256).view(256, 1, 1)).all()
    # About half the samples are cropped (a zero shift is possible when cropped too: 1/81).
    cropped = (shift != 0).any(-1).float().mean().item()
    assert 0.4 < cropped < 0.6


def test_random_crop_with_probability_zero_is_the_identity():
    images = coordinate_images(64)
    batch = TensorDict(pixels=images.clone(), goal_pixels=images.clone(), batch_size=[64])
    out = RandomShiftCrop(["pixels", "goal_pixels"], prob=0.0)(batch)
    assert torch.equal(out["pixels"], images) and torch.equal(out["goal_pixels"], images)


@pytest.mark.parametrize("size,features", [(64, 1024), (48, 256)])
def test_encoder_layout_and_scaling(size, features):
    encoder = PixelEncoder(size)
    convs = [m for m in encoder.net if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size[0], c.stride[0]) for c in convs] == [(32, 8, 4), (64, 4, 2), (64, 3, 1)]
    assert sum(isinstance(m, torch.nn.LayerNorm) for m in encoder.net) == 3
    images = torch.randint(0, 256, (5, size, size, 3), dtype=torch.uint8)
    out = encoder(images)
    assert out.shape == (5, features) == (5, encoder.out_features)
    reference = encoder.net(images.permute(0, 3, 1, 2).float() / 255)
    torch.testing.assert_close(out, reference)
    with pytest.raises(ValueError, match="at least 36"):
        PixelEncoder(32)


@pytest.mark.parametrize(
    "override,pattern",
    [
        ("env.env_name=FetchReach-v4", "env.from_pixels=true is not allowed with env.env_name='FetchReach-v4'"),
        ("env.image_size=32", "env.image_size=32 .* at least 36"),
        ("buffer.random_crop_prob=1.5", r"buffer.random_crop_prob=1.5 .* \[0, 1\]"),
    ],
)
def test_bad_pixel_config_is_named(make_cfg, override, pattern):
    cfg = make_cfg("env.env_name=PointMaze_UMaze-v3", "env.from_pixels=true", override)
    with pytest.raises(ConfigError, match=pattern):
        check_config(cfg)


@pytest.mark.parametrize("shared", [False, True])
def test_actor_encoder_is_its_own_or_the_critics_detached(make_cfg, shared):
    from torchrl.data import Bounded, Composite

    from utils import make_optimizer

    class Specs:
        full_action_spec_unbatched = Composite(action=Bounded(-1.0, 1.0, shape=(2,)))

    cfg = make_cfg("env.env_name=PointMaze_UMaze-v3", "env.from_pixels=true", "env.image_size=40",
                   "model.hidden_dim=16", "model.num_layers=1", "model.embed_dim=4", "buffer.batch_size=8",
                   f"model.actor_shares_encoder={shared}")
    actor, critic = build_agent(cfg, Specs())
    actor_convs = [p for name, p in actor.named_parameters() if ".net.0." in name]
    assert bool(actor_convs) is not shared
    loss_module = build_loss_module(cfg, actor, critic)
    optimizer = make_optimizer(cfg, loss_module)  # raises if a parameter sat in two groups
    images = torch.randint(0, 256, (8, 40, 40, 3), dtype=torch.uint8)
    batch = TensorDict(pixels=images, goal_pixels=images.flip(0), action=torch.rand(8, 2) * 2 - 1, batch_size=[8])
    loss_module(batch)["loss_actor"].backward()
    encoder_grads = [p.grad for p in critic.encoder.parameters()]
    assert all(g is None or (g == 0).all() for g in encoder_grads)
    optimizer.zero_grad()
    if shared:
        # The actor follows the critic's encoder weights.
        before = actor(batch.clone())["loc"]
        with torch.no_grad():
            next(critic.encoder.parameters()).add_(1.0)
        assert not torch.allclose(actor(batch.clone())["loc"], before)


@pytest.mark.parametrize("contrastive", ["infonce", "td"])
def test_proprioceptive_state_joins_the_image_features(make_cfg, contrastive):
    from torchrl.data import Bounded, Composite, Unbounded

    class Specs:
        observation_spec = Composite(observation=Unbounded(4))
        full_action_spec_unbatched = Composite(action=Bounded(-1.0, 1.0, shape=(2,)))

    cfg = make_cfg("env.env_name=PointMaze_UMaze-v3", "env.from_pixels=true", "env.image_size=40",
                   "env.pixels_with_state=true", "model.hidden_dim=16", "model.num_layers=1",
                   "model.embed_dim=4", "model.cold_init=false", f"loss.contrastive={contrastive}")
    actor, critic = build_agent(cfg, Specs())
    assert "observation" in actor.in_keys
    phi_first = critic.state_action_encoders[0][0]
    assert phi_first.in_features == critic.encoder.out_features + 4 + 2
    loss_module = build_loss_module(cfg, actor, critic)
    images = torch.randint(0, 256, (8, 40, 40, 3), dtype=torch.uint8)
    batch = TensorDict(
        pixels=images, goal_pixels=images.flip(0), observation=torch.randn(8, 4),
        action=torch.rand(8, 2) * 2 - 1,
        next=TensorDict(pixels=images.roll(1, 0), observation=torch.randn(8, 4), batch_size=[8]),
        batch_size=[8],
    )
    loss_td = loss_module(batch)
    loss_td["loss_critic"].backward()
    state_columns = phi_first.weight.grad[:, critic.encoder.out_features:critic.encoder.out_features + 4]
    assert torch.isfinite(loss_td["loss_critic"]) and state_columns.abs().sum() > 0
    # The state changes phi's output.
    changed = batch.clone()
    changed["observation"] += 1.0
    with loss_module.critic_network_params.to_module(critic):
        first = critic.encode_state_action(batch["pixels"], batch["action"], batch["observation"])
        second = critic.encode_state_action(changed["pixels"], changed["action"], changed["observation"])
    assert not torch.allclose(first, second)
