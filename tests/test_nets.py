"""Shapes and structure of the ICAM networks, 2D and 3D, K ≥ 2 classes."""

import pytest
import torch
import torch.nn.functional as F

from icam.errors import UserError
from icam.model import ICAM
from icam.nets import ContentDiscriminator, DomainDiscriminator
from icam.nets.blocks import StyleModulation, UpBlock


def count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("shape", [(64, 64), (32, 48), (16, 16, 16), (16, 32, 16)])
def test_shapes_for_three_classes(shape):
    model = ICAM(shape, num_classes=3, width=4)
    x = torch.rand(2, 1, *shape) * 2 - 1
    content = model.encode_content(x)
    mu, logvar = model.encode_attribute(x)
    latent = tuple(s // 16 for s in shape)
    assert content.shape == (2, 16, *(s // 4 for s in shape))
    assert mu.shape == logvar.shape == (2, torch.Size(latent).numel())
    assert model.decode(content, mu).shape == x.shape
    prediction = model.predict(x)
    assert prediction.probabilities.shape == (2, 3)
    assert torch.allclose(prediction.probabilities.sum(1), torch.ones(2))
    assert prediction.target.shape == (2,)

    domain = DomainDiscriminator(len(shape), shape, 3, width=4)
    adversarial, classes = domain(x, torch.tensor([0, 2]))
    assert adversarial.shape == (2,) and classes.shape == (2, 3)
    assert ContentDiscriminator(len(shape), model.content_shape, 16, 3)(content).shape == (2, 3)


def test_training_forward_outputs_match_inputs():
    model = ICAM((32, 32), num_classes=3, width=4)
    x = torch.rand(6, 1, 32, 32)
    partner = (torch.arange(6) + 2) % 6
    out = model(x, partner, torch.randn(6, model.latent_size))
    for image in (out.translated, out.reconstructed, out.randomly_translated, out.cycle_reconstructed):
        assert image.shape == x.shape
        assert image.abs().max() <= 1  # tanh output
    assert out.random_attribute_estimate.shape == (6, model.latent_size)


def test_paper_sized_models_have_the_reference_parameter_counts():
    # The authors' code: Ec 318,720, Ea 75,207, G 412,701 used, D 983,168 (2D); total about 3 M / 9 M.
    model = ICAM((128, 128))
    assert count(model.content_encoder) == 318_720
    assert count(model.attribute_encoder) + count(model.classifier) + count(model.regressor) == 75_207
    assert count(model.generator) == 412_701
    assert count(DomainDiscriminator(2, (128, 128), 2)) == 983_168
    model3d = ICAM((128, 160, 128))
    assert model3d.latent_shape == (8, 10, 8)
    total3d = count(model3d) + 2 * count(DomainDiscriminator(3, (128, 160, 128), 2)) + count(
        ContentDiscriminator(3, model3d.content_shape, 64, 2))
    assert 8.5e6 < total3d < 9.5e6


@pytest.mark.parametrize("shape", [(32, 32), (16, 16, 16)])
def test_a_spectrally_normalised_judge_has_convolutions_of_norm_one(shape):
    """Each convolution's largest singular value is held at 1 (its power iteration runs in
    training passes), so a small texture cannot move the judge's output much."""
    torch.manual_seed(0)
    domain = DomainDiscriminator(len(shape), shape, 2, width=4, spectral_norm=True)
    for _ in range(20):
        domain(torch.randn(2, 1, *shape), torch.tensor([0, 1]))
    convolutions = [m for m in domain.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)]
    assert len(convolutions) >= 3
    for conv in convolutions:
        sigma = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2)
        assert sigma == pytest.approx(1.0, abs=0.05)
    plain = DomainDiscriminator(len(shape), shape, 2, width=4)
    assert count(plain) == count(domain)  # the same weights, only re-scaled


@pytest.mark.parametrize("shape, message", [((60, 64), "multiple of 16"), ((64,), "2 or 3 sides")])
def test_bad_shapes_are_clear_errors(shape, message):
    with pytest.raises(ValueError, match=message):
        ICAM(shape)


def test_eval_mode_is_deterministic_and_training_adds_content_noise():
    model = ICAM((32, 32), width=4)
    x = torch.rand(2, 1, 32, 32)
    model.eval()
    assert torch.equal(model.encode_content(x), model.encode_content(x))
    assert torch.equal(model.predict(x).probabilities, model.predict(x).probabilities)
    model.train()
    assert not torch.equal(model.encode_content(x), model.encode_content(x))


def test_attribute_stride_8_doubles_the_latent_side_and_decodes():
    model = ICAM((64, 64), width=4, attribute_stride=8)
    x = torch.rand(2, 1, 64, 64) * 2 - 1
    mu, _ = model.encode_attribute(x)
    assert model.latent_shape == (8, 8) and mu.shape == (2, 64)
    assert model.decode(model.encode_content(x), mu).shape == x.shape


@pytest.mark.parametrize("shape", [(32, 32), (16, 32, 16)])
def test_the_authors_upsampling_block_has_the_same_weights_and_shapes(shape):
    plain = ICAM(shape, width=4)
    smoothed = ICAM(shape, width=4, upsampling="transposed-avgpool")
    assert count(plain.generator) == count(smoothed.generator)
    x = torch.rand(2, 1, *shape) * 2 - 1
    assert smoothed.decode(smoothed.encode_content(x), smoothed.encode_attribute(x)[0]).shape == x.shape
    with pytest.raises(ValueError, match="upsampling must be one of"):
        ICAM(shape, width=4, upsampling="bilinear")


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_resize_upsampling_has_no_checkerboard(spatial_dims):
    """A transposed convolution's kernel overlaps its outputs unevenly, so even a constant map
    comes out striped with period 2 (the checkerboard a residual map shows); nearest-neighbour
    resizing then a convolution treats every output voxel alike."""
    torch.manual_seed(0)
    constant = torch.ones(1, 8, *[6] * spatial_dims)
    inside = (slice(None), slice(None), *[slice(2, -2)] * spatial_dims)  # away from the zero padding
    for mode, striped in (("transposed", True), ("resize", False)):
        up = UpBlock(spatial_dims, 8, 4, mode)
        out = up(constant)[inside]
        assert out.shape[2:] == (8,) * spatial_dims
        spread = (out - out.mean(dim=tuple(range(2, 2 + spatial_dims)), keepdim=True)).abs().max()
        assert (spread > 1e-3) == striped, mode
    shape = (32, 32) if spatial_dims == 2 else (16, 32, 16)
    model, x = ICAM(shape, width=4, upsampling="resize"), torch.rand(2, 1, *shape) * 2 - 1
    assert model.decode(model.encode_content(x), model.encode_attribute(x)[0]).shape == x.shape


def test_regional_compilation_compiles_each_outermost_repeated_block_and_nothing_else(monkeypatch):
    """runtime.compile=regional: the blocks every network repeats are compiled (one graph per
    kind), the networks around them are not; old configs' true/false still load; CUDA graphs
    without a GPU fall back with a reason."""
    from icam.config import load_config
    from icam.nets.blocks import REPEATED_BLOCKS, compile_networks

    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kwargs: compiled.append((self, kwargs)))
    model = ICAM((32, 32), 2, width=4)
    networks = [model.content_encoder, model.attribute_encoder, model.generator]
    compile_networks(networks, "regional")
    regions = [m for m, _ in compiled]
    assert regions and all(isinstance(m, REPEATED_BLOCKS) for m in regions)
    assert len({id(m) for m in regions}) == len(regions)  # each once
    inside = {id(d) for m in regions for d in m.modules() if d is not m}
    assert not inside & {id(m) for m in regions}  # never a block inside a compiled one
    every = [m for net in networks for m in net.modules() if isinstance(m, REPEATED_BLOCKS) and id(m) not in inside]
    assert len(every) == len(regions)
    compiled.clear()
    compile_networks(networks, "networks")
    assert [m for m, _ in compiled] == networks
    compiled.clear()
    if not torch.cuda.is_available():
        with pytest.warns(UserWarning, match="CUDA graphs"):
            compile_networks(networks[:1], "networks", "reduce-overhead")
        assert compiled[0][1]["mode"] == "default"
    assert load_config(None, ["runtime.compile=true"]).runtime.compile == "networks"
    assert load_config(None, ["runtime.compile=false"]).runtime.compile == "off"


@pytest.mark.parametrize("dims", [2, 3])
def test_padded_convolutions_keep_bf16_and_give_pytorchs_result(dims):
    """CPU autocast pads in float32 (an up-cast of the input before the padding); ours pads in
    the activations' dtype, which changes no value: outputs and gradients equal nn.ConvNd's."""
    from torch.profiler import profile

    from icam.nets.blocks import conv

    ours = conv(dims, 4, 6, 3, padding=1)
    reference = getattr(torch.nn, f"Conv{dims}d")(4, 6, 3, padding=1, padding_mode="reflect")
    reference.load_state_dict(ours.state_dict())
    x = torch.randn(2, 4, *[8] * dims).bfloat16()
    results = []
    for net in (ours, reference):
        with profile() as trace, torch.autocast("cpu", dtype=torch.bfloat16):
            y = net(x)
        y.float().sum().backward()
        casts = sum(e.name == "aten::_to_copy" for e in trace.events())
        results.append((y, net.weight.grad, casts))
    (ours_y, ours_grad, ours_casts), (ref_y, ref_grad, ref_casts) = results
    assert ours_y.dtype == torch.bfloat16 and torch.equal(ours_y, ref_y) and torch.equal(ours_grad, ref_grad)
    assert ours_casts <= ref_casts and (dims == 3 or ours_casts < ref_casts)  # 3D padding was never up-cast


@pytest.mark.parametrize("shape", [(32, 48), (16, 32, 16)])
def test_a_residual_translation_is_the_scan_plus_the_decoded_change(shape):
    """translation=residual: x + G(z_c, z_a) − G(z_c, z_a(x)): a translation to the scan's own
    attribute is the scan (both references agree), the change is what the attribute changes in
    the decoding (the decoder's error |G(z_c, mu) − x| is not in it), and training composes it
    the same way from the shared decoding of x's own attribute."""
    model = ICAM(shape, 2, width=4, translation="residual").eval()
    x = torch.rand(3, 1, *shape) * 2 - 1
    content, (mu, _) = model.encode_content(x), model.encode_attribute(x)
    other = torch.randn_like(mu)
    translated = model.translate_from(x, content, other, mu)
    assert torch.allclose(translated - x, model.decode(content, other) - model.decode(content, mu), atol=1e-6)
    assert torch.allclose(model.translate_from(x, content, mu, mu), x, atol=1e-6)
    assert torch.equal(model.fa_reference(x, "reconstruction"), x)
    assert torch.allclose(model.reconstruct(x), model.decode(content, mu))  # the decoder's, not the translation's
    one_source = model.translate_from(x[:1].expand(4, *x.shape[1:]), content[:1].expand(4, *content.shape[1:]),
                                      torch.randn(4, mu.shape[1]), mu[:1])  # one row serves every translation
    assert one_source.shape == (4, 1, *shape)
    torch.manual_seed(5)
    out = model.train()(x, torch.tensor([1, 2, 0]), torch.randn_like(mu))
    image_model = ICAM(shape, 2, width=4)
    image_model.load_state_dict(model.state_dict())  # the same networks: only the composition differs
    torch.manual_seed(5)
    plain = image_model.train()(x, torch.tensor([1, 2, 0]), torch.randn_like(mu))
    assert torch.allclose(out.translated, x + plain.translated - plain.reconstructed, atol=1e-5)
    with pytest.raises(ValueError, match="translation must be one of"):
        ICAM(shape, width=4, translation="additive")


@pytest.mark.parametrize("shape", [(32, 48), (16, 32, 16)])
def test_more_attribute_channels_and_the_attribute_at_every_scale(shape):
    """attribute_channels=C: a C-channel attribute map (C × S/16 numbers) that the classifier
    reads and the generator decodes; attribute_injection=every-scale adds a modulation of the
    generator's features at S/2 and S which starts as the identity (the same image as without it)."""
    plain = ICAM(shape, width=4, attribute_channels=3)
    x = torch.rand(2, 1, *shape) * 2 - 1
    mu, _ = plain.encode_attribute(x)
    assert mu.shape == (2, 3 * torch.Size(plain.latent_shape).numel()) and plain.latent_size == mu.shape[1]
    assert plain.predict(x).probabilities.shape == (2, 2)
    torch.manual_seed(0)
    modulated = ICAM(shape, width=4, attribute_channels=3, attribute_injection="every-scale")
    modulated.load_state_dict(plain.state_dict(), strict=False)
    assert len(modulated.generator.modulations) == 2
    content = plain.encode_content(x)
    plain.eval(), modulated.eval()
    assert torch.allclose(plain.decode(content, mu), modulated.decode(content, mu), atol=1e-6)
    with pytest.raises(ValueError, match="attribute_injection must be one of"):
        ICAM(shape, width=4, attribute_injection="film")


@pytest.mark.parametrize("shape", [(32, 48), (16, 32, 16)])
@pytest.mark.parametrize("channels, stride", [(3, 4), (None, 2)])
def test_a_narrower_or_finer_content_code_still_decodes_and_rebuilds(shape, channels, stride):
    """content_channels=C: z_c has C channels (a 1×1 convolution after the trunk); content_stride=2:
    z_c keeps S/2 and G up-samples it once. The generator and the content discriminator take it,
    and the model rebuilds from its hparams around its weights."""
    model = ICAM(shape, width=4, content_channels=channels, content_stride=stride, translation="residual").eval()
    x = torch.rand(2, 1, *shape) * 2 - 1
    content = model.encode_content(x)
    assert content.shape == (2, channels or 16, *(s // stride for s in shape))
    assert model.content_shape == content.shape[2:]
    assert len(model.generator.upsample) == {4: 2, 2: 1}[stride]
    assert model.translate(x, target_class=1).shape == x.shape
    judge = ContentDiscriminator(len(shape), model.content_shape, model.content_encoder.out_channels, 2)
    assert judge(content).shape == (2, 2)
    rebuilt = ICAM(**model.hparams).eval()
    rebuilt.load_state_dict(model.state_dict())
    assert torch.equal(rebuilt.encode_content(x), content)
    assert ICAM(shape, width=4).encode_content(x).shape[1:] == (16, *(s // 4 for s in shape))  # the paper's
    with pytest.raises(ValueError, match="stride must be one of"):
        ICAM(shape, width=4, content_stride=8)


@pytest.mark.parametrize("shape", [(32, 48), (16, 32, 16)])
def test_the_attribute_as_a_style_conditions_every_block_and_rebuilds(shape):
    """attribute_injection=style: the attribute vector becomes a style code that scales and shifts
    the channels after each of the generator's three residual and two up-sampling blocks (each
    the identity until it learns); the attribute moves the decoding, gradients reach the code,
    and the model rebuilds from its hparams around its weights."""
    model = ICAM(shape, width=4, attribute_injection="style", translation="residual")
    assert len(model.generator.body_modulations) == 3 and len(model.generator.modulations) == 2
    features, style = torch.randn(2, 5, *shape), torch.randn(2, 16)
    assert torch.equal(StyleModulation(16, 5)(features, style), features)
    x = torch.rand(2, 1, *shape) * 2 - 1
    content, (mu, _) = model.encode_content(x), model.encode_attribute(x)
    decoded = model.decode(content, mu)
    assert decoded.shape == x.shape
    assert (model.decode(content, mu + 1) - decoded).abs().mean() > 1e-4
    decoded.square().mean().backward()
    assert model.generator.style is not None and all(
        p.grad is not None and p.grad.abs().sum() > 0 for p in model.generator.style.parameters())
    model.eval()
    rebuilt = ICAM(**model.hparams).eval()
    rebuilt.load_state_dict(model.state_dict())
    generator = torch.Generator().manual_seed(0)
    translated = model.translate(x, target_class=1, generator=generator)
    assert torch.equal(rebuilt.translate(x, target_class=1, generator=generator.manual_seed(0)), translated)


def test_the_channel_norm_generator_keeps_a_local_change_local():
    """generator_norm=channel normalises each voxel over its channels: a change of the content code
    in one corner moves only the voxels within the generator's reach of it, where the paper's
    instance and layer norms (statistics over the whole image) move nearly all of them."""
    changed = {}
    for norm in ("instance", "channel"):
        torch.manual_seed(0)
        model = ICAM((64, 64), 2, width=4, generator_norm=norm).eval()
        content, attribute = torch.randn(1, 16, 16, 16), torch.randn(1, model.latent_size)
        moved = content.clone()
        moved[..., :2, :2] += 1
        difference = (model.decode(moved, attribute) - model.decode(content, attribute)).abs()[0, 0]
        changed[norm] = float((difference > 1e-5).float().mean())
        assert difference[-16:, -16:].max() < 1e-5 or norm == "instance"  # the far corner stays as it was
    assert changed["instance"] > 0.9 and changed["channel"] < 0.5, changed
    with pytest.raises(ValueError, match="generator norm must be one of"):
        ICAM((32, 32), width=4, generator_norm="batch")


def test_a_per_class_judge_learns_what_a_class_never_shows():
    """Class 1's scans have a blob, class 0's never do; translations to class 0 that keep the
    blob are fakes. A judge per class learns to call a blob fake as class 0 and real as class 1;
    a shared judge cannot tell the two claims apart (the same image, real and fake)."""
    torch.manual_seed(0)
    shape = (32, 32)
    blob = torch.zeros(1, 1, *shape)
    blob[..., 12:20, 12:20] = 1.0

    def scans(n, with_blob):
        return torch.randn(n, 1, *shape) * 0.3 + (blob if with_blob else 0)

    zeros, ones = torch.zeros(8, dtype=torch.long), torch.ones(8, dtype=torch.long)
    judges = {kind: DomainDiscriminator(2, shape, 2, width=4, real_fake=kind) for kind in ("per-class", "shared")}
    for judge in judges.values():
        optimiser = torch.optim.Adam(judge.parameters(), lr=2e-3)
        for _ in range(60):
            real = torch.cat([scans(8, False), scans(8, True)])
            real_logits = judge(real, torch.cat([zeros, ones]))[0]
            fake_logits = judge(scans(8, True), zeros)[0]  # the blob kept in a translation to class 0
            loss = F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    with torch.no_grad():
        test = scans(8, True)
        as_class_0, as_class_1 = (judges["per-class"](test, c)[0] for c in (zeros, ones))
        assert (as_class_1 - as_class_0).min() > 2  # the blob gives a class-0 claim away
        assert torch.equal(judges["shared"](test, zeros)[0], judges["shared"](test, ones)[0])
    with pytest.raises(UserError, match="per-class"):
        DomainDiscriminator(2, shape, 2, real_fake="each")


@pytest.mark.parametrize("shape", [(32, 32), (16, 16, 16)])
def test_a_centred_judge_is_blind_to_overall_brightness(shape):
    """A translation that only shifts the whole image's intensity changes nothing a centred
    judge sees; an uncentred one sees the shift."""
    torch.manual_seed(0)
    x, classes = torch.randn(2, 1, *shape), torch.tensor([0, 1])
    centred = DomainDiscriminator(len(shape), shape, 2, width=4, real_fake="per-class", centred=True)
    for a, b in zip(centred(x, classes), centred(x + 0.3, classes)):
        assert torch.allclose(a, b, atol=1e-5)
    plain = DomainDiscriminator(len(shape), shape, 2, width=4, real_fake="per-class")
    plain.load_state_dict(centred.state_dict())
    assert not torch.allclose(plain(x, classes)[0], plain(x + 0.3, classes)[0], atol=1e-5)
