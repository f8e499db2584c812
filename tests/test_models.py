import pytest
import torch
from torch import nn

from torchrepro.errors import ParamsError
from torchrepro.models import MODELS, count_parameters, create_model

IMAGE = [1, 28, 28]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_runs_forward_and_backward(name):
    torch.manual_seed(0)
    model = create_model(name, IMAGE, 10)
    x = torch.randn(4, *IMAGE)  # (B, 1, 28, 28)
    out = model(x)
    assert out.shape == (4, 10)
    torch.nn.functional.cross_entropy(out, torch.tensor([0, 1, 2, 3])).backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), param_name
    assert any(param.grad.abs().sum() > 0 for param in model.parameters())


@pytest.mark.parametrize("name", sorted(set(MODELS) - {"cnn"}))  # cnn is for 28x28 images only
def test_every_tabular_capable_model_takes_feature_vectors(name):
    model = create_model(name, [4], 1)
    assert model(torch.randn(3, 4)).shape == (3, 1)


def test_twolayernet_has_the_tutorial_layout():
    model = create_model("twolayernet", IMAGE, 10, hidden_size=100)
    assert list(model.state_dict()) == ["layers.0.weight", "layers.0.bias", "layers.2.weight", "layers.2.bias"]
    assert isinstance(model.flatten, nn.Flatten)
    assert isinstance(model.layers, nn.Sequential)
    assert model.state_dict()["layers.0.weight"].shape == (100, 784)
    assert model.state_dict()["layers.2.weight"].shape == (10, 100)
    assert count_parameters(model) == 784 * 100 + 100 + 100 * 10 + 10


def test_mlp_layers_follow_hidden_sizes_and_activation():
    model = create_model("mlp", IMAGE, 10, hidden_sizes=[32, 16], activation="tanh")
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 32), (32, 16), (16, 10)]
    assert sum(isinstance(m, nn.Tanh) for m in model.modules()) == 2


def test_cnn_shape():
    model = create_model("cnn", IMAGE, 10)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(9216, 128), (128, 10)]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(m.in_channels, m.out_channels, m.kernel_size) for m in convs] == [(1, 32, (3, 3)), (32, 64, (3, 3))]


def test_cnn_refuses_other_input_shapes():
    with pytest.raises(ParamsError, match="model: cnn expects 1x28x28 images, the dataset gives 4"):
        create_model("cnn", [4], 3)


def test_linear_is_one_affine_map():
    model = create_model("linear", [3], 1)
    assert count_parameters(model) == 3 + 1


def test_unknown_model_lists_the_registered_ones():
    with pytest.raises(ParamsError) as info:
        create_model("resnet", IMAGE, 10, key="experiments.e.model")
    message = str(info.value)
    assert message.startswith("experiments.e.model.name: unknown model 'resnet'; allowed: ")
    assert message.endswith(", ".join(sorted(MODELS)))


def test_unknown_model_option_names_the_key_and_the_allowed_ones():
    with pytest.raises(ParamsError, match=r"^experiments\.e\.model\.hidden: unknown option for model 'twolayernet'; allowed: hidden_size$"):
        create_model("twolayernet", IMAGE, 10, key="experiments.e.model", hidden=5)
    with pytest.raises(ParamsError, match=r"model\.hidden_size: unknown option for model 'linear'; allowed: none"):
        create_model("linear", [2], 1, hidden_size=5)


@pytest.mark.parametrize("activation", ["softmax", "ReLU", ""])
def test_mlp_activation_is_validated(activation):
    with pytest.raises(ParamsError, match=rf"^model: unknown activation '{activation}'; allowed: relu, sigmoid, tanh$"):
        create_model("mlp", IMAGE, 10, activation=activation)


@pytest.mark.parametrize("hidden_sizes", [[], [0], [16, -1], [1.5], ["8"]])
def test_mlp_hidden_sizes_are_validated(hidden_sizes):
    with pytest.raises(ParamsError, match="hidden_sizes must be a non-empty list of positive integers"):
        create_model("mlp", IMAGE, 10, hidden_sizes=hidden_sizes)


def test_wrong_type_for_a_model_option_is_a_params_error():
    with pytest.raises(ParamsError, match="^model: "):
        create_model("twolayernet", IMAGE, 10, hidden_size="100")


def test_initialization_follows_the_seed():
    torch.manual_seed(3)
    a = create_model("mlp", [4], 2, hidden_sizes=[8])
    torch.manual_seed(3)
    b = create_model("mlp", [4], 2, hidden_sizes=[8])
    torch.manual_seed(4)
    c = create_model("mlp", [4], 2, hidden_sizes=[8])
    for (name, pa), pb, pc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(pa, pb), name
        assert not torch.equal(pa, pc), name
