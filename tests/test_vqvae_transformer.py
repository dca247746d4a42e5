import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from imagesynth.cli.main import app
from imagesynth.errors import ImagesynthError
from imagesynth.io.pngmeta import read_png_metadata
from imagesynth.io.rundir import latest_checkpoint
from imagesynth.models.pixelcnn import uniforms
from imagesynth.models.token_transformer import GPTConfig, TokenTransformer, sample_tokens
from imagesynth.models.vqvae import VectorQuantizerEMA
from imagesynth.training.config import TrainConfig
from imagesynth.training.state import load_tensors
from imagesynth.training.trainer import Trainer

runner = CliRunner()


def _quantizer(restart_below=0.0):
    torch.manual_seed(0)
    q = VectorQuantizerEMA(size=4, dim=2, decay=0.9, restart_below=restart_below)
    q.embed.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]))
    q.cluster_size.fill_(1.0)
    q.embed_sum.copy_(q.embed)
    return q


def test_straight_through_and_commitment_values():
    q = _quantizer().eval()
    z = torch.tensor([[0.1, 0.2], [0.9, -0.1], [0.2, 0.7], [0.4, 0.1]])  # (N, D)
    z_e = z.T.reshape(1, 2, 2, 2).clone().requires_grad_(True)  # (B, D, h, w)
    z_st, idx, commit, stats = q(z_e)
    assert idx.flatten().tolist() == [0, 1, 2, 0]
    expected = q.embed[torch.tensor([0, 1, 2, 0])]
    torch.testing.assert_close(z_st.permute(0, 2, 3, 1).reshape(-1, 2), expected)
    torch.testing.assert_close(commit, F.mse_loss(z, expected))
    w = torch.randn_like(z_e)
    (g,) = torch.autograd.grad((z_st * w).sum(), z_e)
    torch.testing.assert_close(g, w)  # straight through: identity gradient
    (gc,) = torch.autograd.grad(commit, z_e)
    torch.testing.assert_close(gc, 2 * (z_e - z_st).detach() / z.numel())
    assert stats["usage"] == 0.75
    p = torch.tensor([0.5, 0.25, 0.25])
    assert abs(stats["perplexity"] - float(torch.exp(-(p * p.log()).sum()))) < 1e-5


def test_codebook_ema_update_and_dead_code_restart():
    q = _quantizer().train()
    z = torch.tensor([[0.1, 0.2], [0.9, -0.1], [0.2, 0.7], [0.4, 0.1]])
    q(z.T.reshape(1, 2, 2, 2))
    g, eps = 0.9, 1e-5
    counts = torch.tensor([2.0, 1.0, 1.0, 0.0])
    n_k = g * torch.ones(4) + (1 - g) * counts
    sums = torch.stack([z[0] + z[3], z[1], z[2], torch.zeros(2)])
    m_k = g * torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]) + (1 - g) * sums
    n = n_k.sum()
    e_k = m_k / ((n_k + eps) / (n + 4 * eps) * n).unsqueeze(1)
    torch.testing.assert_close(q.cluster_size, n_k)
    torch.testing.assert_close(q.embed_sum, m_k)
    torch.testing.assert_close(q.embed, e_k)
    # code 3 is never used: with a threshold it is restarted on one of the batch's vectors
    q = _quantizer(restart_below=0.95).train()
    _, _, _, stats = q(z.T.reshape(1, 2, 2, 2), torch.Generator().manual_seed(0))
    assert stats["restarts"] == 1.0
    assert any(torch.equal(q.embed[3], row) for row in z)


def _local_stats(q, z):
    """This process's (counts, per-code sums) of a batch z (N, D) against q's codebook."""
    idx = q.codes(z)
    counts = torch.bincount(idx, minlength=q.size).float()
    return counts, torch.zeros(q.size, q.dim).index_add_(0, idx, z)


def test_ema_all_reduce_makes_half_batches_equal_one_big_batch(monkeypatch):
    """Under DDP each rank sees half the batch; with n_k and the sums all-reduced, a rank's
    EMA step equals the single-process step on the whole batch (simulated: the all-reduce
    adds the other rank's statistics)."""
    import imagesynth.models.vqvae as vq

    z = torch.tensor([[0.1, 0.2], [0.9, -0.1], [0.2, 0.7], [0.4, 0.1], [1.1, 0.1], [0.0, 0.9]])
    whole = _quantizer().train()
    whole(z.T.reshape(1, 2, 6, 1))
    half_a, half_b = z[:3], z[3:]
    rank0 = _quantizer().train()
    other_counts, other_sums = _local_stats(rank0, half_b)

    def fake_all_reduce(counts, sums):
        counts.add_(other_counts)
        sums.add_(other_sums)

    monkeypatch.setattr(vq, "all_reduce_sum", fake_all_reduce)
    _, _, _, stats = rank0(half_a.T.reshape(1, 2, 3, 1))
    for name in ("cluster_size", "embed_sum", "embed"):
        torch.testing.assert_close(getattr(rank0, name), getattr(whole, name))
    # without the reduction (a plain single process) the half-batch step differs
    monkeypatch.setattr(vq, "all_reduce_sum", lambda *t: None)
    alone = _quantizer().train()
    alone(half_a.T.reshape(1, 2, 3, 1))
    assert not torch.allclose(alone.embed, whole.embed)
    assert stats["usage"] == 0.75  # logged usage stays this rank's own (3 of 4 codes)


def _ddp_worker(rank, world, init_file, out_dir):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        q = _quantizer(restart_below=0.95).train()  # code 3 is dead: restarted on rank 0's pick
        z = torch.tensor([[0.1, 0.2], [0.9, -0.1], [0.2, 0.7], [0.4, 0.1]])
        mine = z[2 * rank : 2 * rank + 2]
        gen = torch.Generator().manual_seed(100 + rank)  # different picks per rank
        q(mine.T.reshape(1, 2, 2, 1), gen)
        torch.save({k: v.clone() for k, v in q.state_dict().items()}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ema_codebook_stays_identical_across_two_gloo_ranks(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    # the EMA counts are the global batch's: codes 0, 1, 2 get 2, 1, 1 of the 4 vectors
    g = 0.9
    expected = g * torch.ones(3) + (1 - g) * torch.tensor([2.0, 1.0, 1.0])
    torch.testing.assert_close(r0["cluster_size"][:3], expected)


def _gpt(classes=3, seed=0):
    torch.manual_seed(seed)
    return TokenTransformer(
        GPTConfig(vocab=7, tokens=9, num_classes=classes, dim=16, layers=2, heads=2)
    ).eval()


def test_transformer_is_causal():
    net = _gpt()
    codes = torch.randint(0, 7, (2, 9), generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 2])
    base = net(codes, labels)
    for t in (0, 3, 8):
        changed = codes.clone()
        changed[:, t:] = (changed[:, t:] + 1) % 7
        out = net(changed, labels)
        torch.testing.assert_close(out[:, : t + 1], base[:, : t + 1])  # logit t sees < t
        if t + 1 < 9:
            assert (out[:, t + 1] - base[:, t + 1]).abs().max() > 1e-4
    other = net(codes, torch.tensor([1, 1]))
    assert (other[:, 0] - base[:, 0]).abs().max() > 1e-4  # the class start token matters


def test_kv_cached_sampling_equals_full_recomputation():
    net = _gpt()
    labels = torch.tensor([0, 1, 2])
    codes, kept = sample_tokens(net, labels, uniforms([1, 2, 3], 9), keep_logits=True)
    with torch.no_grad():
        full = net(codes, labels)
    torch.testing.assert_close(kept, full, atol=1e-5, rtol=1e-5)
    top1, _ = sample_tokens(net, labels, uniforms([1, 2, 3], 9), top_k=1)
    with torch.no_grad():
        assert torch.equal(net(top1, labels).argmax(-1), top1)  # greedy = argmax everywhere


def _cfg(tmp_path, family, **kw):
    base = dict(
        family=family, data="digits", size=8, steps=4, batch=8, log_every=1, sample_every=1000,
        sample_n=4, ckpt_every=1000, runs_dir=str(tmp_path), warmup_steps=2, progress=False,
    )  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


VQ = {"width": 16, "factor": 2, "codebook_size": 16, "code_dim": 4}


def test_vqvae_resume_exact_transformer_and_sample_cli(tmp_path):
    import imagesynth

    straight = Trainer(_cfg(tmp_path / "a", "vqvae", family_options=VQ)).train()
    Trainer(_cfg(tmp_path / "b", "vqvae", steps=2, family_options=VQ)).train()
    resumed = Trainer(_cfg(tmp_path / "b", "vqvae", family_options=VQ), resume="latest").train()
    a = load_tensors(latest_checkpoint(straight.run_dir) / "net-vqvae.safetensors")
    b = load_tensors(latest_checkpoint(resumed.run_dir) / "net-vqvae.safetensors")
    assert "quantizer.embed" in a and "quantizer.cluster_size" in a
    for k in a:
        assert torch.equal(a[k], b[k]), k
    row = straight.stats[-1]
    assert {"vq/perplexity", "vq/usage", "vq/commit", "vq/restarts"} <= set(row)
    assert straight.stats[0]["vq/restarts"] > 0  # all codes start dead: data initialisation

    vq_dir = straight.model_dir
    vq = imagesynth.load(vq_dir, device="cpu")
    with pytest.raises(ImagesynthError, match="train a transformer prior on it"):
        vq(n=1)
    digits = torch.rand(2, 1, 8, 8) * 2 - 1
    assert vq.encode(digits).shape == (2, 4, 4)
    assert len(vq.reconstruct(digits)) == 2

    opts = {"vqvae": str(vq_dir), "dim": 16, "layers": 1, "heads": 2}
    tr = Trainer(_cfg(tmp_path / "c", "transformer", cond="class", family_options=opts)).train()
    assert "nll/bits_per_token" in tr.stats[-1]
    pipe = imagesynth.load(tr.model_dir, device="cpu")
    again = imagesynth.load(tr.model_dir, device="cpu")
    for k, v in pipe.net.state_dict().items():
        assert torch.equal(v, again.net.state_dict()[k])
    out = pipe(n=3, seed=4, class_labels=[0, 5, 9], temperature=0.8, top_k=5)
    one = again(n=1, seed=5, class_labels=[5], temperature=0.8, top_k=5)
    assert list(out.images[1].tobytes()) == list(one.images[0].tobytes())
    assert out.params[0]["temperature"] == 0.8 and out.params[0]["top_k"] == 5
    with pytest.raises(ImagesynthError, match=r"top_k must be an integer in 1\.\.16"):
        pipe(n=1, top_k=17)
    with pytest.raises(ImagesynthError, match="class index -1 out of range"):
        pipe(n=1, class_labels=[-1])

    # interpolate: the VQ-VAE latent path between two seeds' samples; the ends are those samples
    strip = tmp_path / "strip.png"
    res = runner.invoke(
        app, ["interpolate", str(tr.model_dir), "--from-seed", "3", "--to-seed", "8",
              "--frames", "5", "--class", "4", "--out", str(strip)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    meta = read_png_metadata(strip).imagesynth
    assert meta["interpolate_to_seed"] == 8 and meta["class_label"] == 4
    assert "VQ-VAE latent" in meta["grid"]
    from imagesynth.io.images import tensor_to_pil
    from imagesynth.models.token_transformer import interpolate

    frames = interpolate(pipe.net, pipe.vqvae, from_seed=3, to_seed=8, frames=5, label=4)
    ends = [pipe(n=1, seed=s, class_labels=[4]).images[0] for s in (3, 8)]
    got = tensor_to_pil(frames)
    assert frames.shape == (5, 1, 8, 8)
    assert got[0].tobytes() == ends[0].tobytes() and got[-1].tobytes() == ends[1].tobytes()
    mid = (frames[2] - (frames[0] + frames[4]) / 2).abs().mean()
    assert float(mid) < float((frames[0] - frames[4]).abs().mean())  # between, not elsewhere
    for args, msg in (
        (["--truncation", "0.5"], "--truncation applies to GAN / VAE latents"),
        (["--class", "12"], "class index 12 out of range"),
        (["--frames", "1"], "frames must be an integer >= 2"),
    ):
        res = runner.invoke(app, ["interpolate", str(tr.model_dir), *args, "--out", str(strip)])
        assert isinstance(res.exception, ImagesynthError), res.output
        assert msg in str(res.exception)

    grid = tmp_path / "grid.png"
    res = runner.invoke(app, ["sample", str(tr.model_dir), "--n", "4", "--out", str(grid)])
    assert res.exit_code == 0, res.output
    assert "transformer" in str(read_png_metadata(grid).parameters)
    res = runner.invoke(app, ["sample", str(vq_dir), "--n", "4", "--out", str(grid)])
    assert isinstance(res.exception, ImagesynthError)
    assert "imagesynth train transformer --vqvae" in str(res.exception)


def test_cli_bad_input(tmp_path):
    res = runner.invoke(app, ["train", "transformer", "--data", "digits", "--steps", "2"])
    assert isinstance(res.exception, ImagesynthError)
    assert "needs --vqvae MODEL_DIR" in str(res.exception)
    res = runner.invoke(
        app, ["train", "vqvae", "--data", "digits", "--size", "8", "--factor", "3", "--steps", "1"]
    )
    assert isinstance(res.exception, ImagesynthError)
    assert "factor must be 1, 2, 4, 8 or 16" in str(res.exception)
    res = runner.invoke(
        app,
        ["train", "transformer", "--vqvae", str(tmp_path), "--data", "digits", "--steps", "1",
         "--runs-dir", str(tmp_path / "runs")],
    )  # fmt: skip
    assert isinstance(res.exception, ImagesynthError)
    assert "not an imagesynth model directory" in str(res.exception)
