import pytest
import torch
from torch import nn

from torchrepro.core.errors import ParamsError
from torchrepro.models.nets import MODELS, count_parameters, create_model

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


def test_cnn_takes_its_channels_and_size_from_the_data():
    model = create_model("cnn", [3, 32, 32], 2)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs[0].in_channels == 3
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears[0].in_features == 64 * 14 * 14
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 2)
    odd = create_model("cnn", [1, 9, 7], 2)  # odd sides: the pool floors, 64 x 2 x 1 features
    assert odd(torch.zeros(2, 1, 9, 7)).shape == (2, 2) and odd[7].in_features == 128


def test_cnn_refuses_tables_and_tiny_images():
    with pytest.raises(
        ParamsError, match=r"^model: cnn expects images \(channels x height x width\), the dataset gives 4 features$"
    ):
        create_model("cnn", [4], 3)
    with pytest.raises(ParamsError, match="^model: cnn expects images of at least 6x6 pixels, the dataset gives 5x8$"):
        create_model("cnn", [3, 5, 8], 3)


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
    with pytest.raises(
        ParamsError,
        match=r"^experiments\.e\.model\.hidden: unknown option for model 'twolayernet'; allowed: hidden_size$",
    ):
        create_model("twolayernet", IMAGE, 10, key="experiments.e.model", hidden=5)
    with pytest.raises(ParamsError, match=r"model\.hidden_size: unknown option for model 'linear'; allowed: bias"):
        create_model("linear", [2], 1, hidden_size=5)


@pytest.mark.parametrize("activation", ["softmax", "ReLU", ""])
def test_mlp_activation_is_validated(activation):
    with pytest.raises(
        ParamsError, match=rf"^model\.activation: Input should be 'relu', 'sigmoid' or 'tanh' \(got '{activation}'\)$"
    ):
        create_model("mlp", IMAGE, 10, activation=activation)


@pytest.mark.parametrize(
    "hidden_sizes, where, problem",
    [
        ([], "hidden_sizes", "at least 1 item"),
        ([0], "hidden_sizes.0", "greater than or equal to 1"),
        ([16, -1], "hidden_sizes.1", "greater than or equal to 1"),
        ([1.5], "hidden_sizes.0", "valid integer"),
        (["8"], "hidden_sizes.0", "valid integer"),
        ([2**20], "hidden_sizes.0", "less than or equal to 65536"),
        ([8] * 65, "hidden_sizes", "at most 64 items"),
    ],
)
def test_mlp_hidden_sizes_are_validated(hidden_sizes, where, problem):
    with pytest.raises(ParamsError, match=rf"^model\.{where}: .*{problem}"):
        create_model("mlp", IMAGE, 10, hidden_sizes=hidden_sizes)


@pytest.mark.parametrize(
    "name, options, problem",
    [
        ("twolayernet", {"hidden_size": "100"}, "hidden_size: Input should be a valid integer"),
        ("twolayernet", {"hidden_size": 10**12}, "hidden_size: Input should be less than or equal to 65536"),
        ("twolayernet", {"hidden_size": True}, "hidden_size: Input should be a valid integer"),
        ("cnn", {"dropout1": 1.0}, "dropout1: Input should be less than 1"),
        ("cnn", {"dropout2": -0.1}, "dropout2: Input should be greater than or equal to 0"),
        ("linear", {"bias": "no"}, "bias: Input should be a valid boolean"),
    ],
)
def test_out_of_range_options_fail_before_any_tensor_is_made(name, options, problem, monkeypatch):
    def no_tensors(*args, **kwargs):
        raise AssertionError("a tensor was made before the options were checked")

    monkeypatch.setattr(torch.nn.Linear, "__init__", no_tensors)
    monkeypatch.setattr(torch.nn.Conv2d, "__init__", no_tensors)
    with pytest.raises(ParamsError, match=f"^model\\.{problem}"):
        create_model(name, IMAGE, 10, **options)


def test_a_model_too_large_to_train_is_refused_before_allocating(monkeypatch):
    """Each width is in range, but two of them in a row need over 2^32 parameters: the
    parameters are counted on the meta device, which allocates nothing."""
    n = 784 * 65536 + 65536 + 65536 * 65536 + 65536 + 65536 * 10 + 10
    with pytest.raises(ParamsError, match=rf"has {n:,} parameters; at most 1,073,741,824 are allowed"):
        create_model("mlp", IMAGE, 10, key="model", hidden_sizes=[65536, 65536])


def test_linear_without_bias_is_y_equals_a_x():
    model = create_model("linear", [1], 1, bias=False)
    assert count_parameters(model) == 1
    torch.nn.init.constant_(model[1].weight, 3.0)
    assert model(torch.tensor([[2.0]])).item() == 6.0


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
