"""LSTM/GRU forecasters: ``ManyToOne`` (window -> next value) and ``ManyToMany`` (stateful, every step).

Shapes: inputs ``(batch, time, features)``; feature 0 is the (normalised) target. With
``ForecasterConfig.calendar_features`` features 1..4 are ``models.forecasting.calendar`` columns of the step's
timestamp (``features`` is then 5, or 3 without the weekly columns).
Recurrent state is always a pair ``(h, c)``, each ``(layers, batch, hidden)``; for ``cell="gru"``
``c`` is carried but unused (zeros), so the streaming scorer handles one state layout.

``ManyToMany`` has two decoders (``ForecasterConfig.decoder``):

* ``"stateful"``: a linear head on the top hidden state emits the next ``horizon`` values.
* ``"encoder-decoder"``: the stateful LSTM is the encoder (its state summarises the history);
  at every step a decoder cell starts from the encoder's top hidden state and unrolls ``horizon``
  steps, feeding back its own prediction (no teacher forcing, so training matches inference).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from models.core.kinds import KINDS
from models.forecasting.calendar import calendar_dim

State = tuple[torch.Tensor, torch.Tensor]

CELLS = ("lstm", "gru")
DECODERS = ("stateful", "encoder-decoder")


@dataclass
class ForecasterConfig:
    """Architecture of a forecaster; stored in the bundle's meta.json."""

    kind: str = "many-to-one"
    window: int = 64  # many-to-one: input length; many-to-many: TBPTT chunk length
    horizon: int = 1
    hidden: int = 64
    layers: int = 1
    cell: str = "lstm"
    dropout: float = 0.0
    features: int = 1
    decoder: str = "stateful"
    calendar_features: bool = False  # inputs get models.forecasting.calendar columns (time of day/week) after the value
    calendar_week: bool = True  # with calendar_features: include the day-of-week columns (else time of day only)

    def __post_init__(self) -> None:
        if self.calendar_features:
            need = 1 + calendar_dim(self.calendar_week)
            if self.features == 1:
                self.features = need
            if self.features != need:
                raise ValueError(f"calendar_features needs features={need} (value + calendar), got {self.features}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {CELLS}, got {self.cell!r}")
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {self.decoder!r}")
        if min(self.window, self.horizon, self.hidden, self.layers, self.features) < 1:
            raise ValueError("window, horizon, hidden, layers and features must be >= 1")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ForecasterConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _rnn(config: ForecasterConfig) -> nn.Module:
    rnn_cls = nn.LSTM if config.cell == "lstm" else nn.GRU
    return rnn_cls(
        config.features,
        config.hidden,
        config.layers,
        batch_first=True,
        dropout=config.dropout if config.layers > 1 else 0.0,
    )


class Forecaster(nn.Module):
    """Common base: holds the config and the stacked recurrent layers."""

    def __init__(self, config: ForecasterConfig):
        super().__init__()
        self.config = config
        self.rnn = _rnn(config)

    def init_state(self, batch: int) -> State:
        """Zero state ``(h, c)``, each ``(layers, batch, hidden)``, on the model's device."""
        p = next(self.parameters())
        shape = (self.config.layers, batch, self.config.hidden)
        return torch.zeros(shape, dtype=p.dtype, device=p.device), torch.zeros(shape, dtype=p.dtype, device=p.device)

    def _run(self, x: torch.Tensor, state: State | None) -> tuple[torch.Tensor, State]:
        if self.config.cell == "gru":
            out, h = self.rnn(x, None if state is None else state[0].contiguous())
            return out, (h, torch.zeros_like(h))
        out, (h, c) = self.rnn(x, None if state is None else (state[0].contiguous(), state[1].contiguous()))
        return out, (h, c)


class ManyToOne(Forecaster):
    """Stacked RNN; linear head on the last hidden state -> next ``horizon`` values (horizon=1: next value)."""

    def __init__(self, config: ForecasterConfig):
        super().__init__(config)
        self.head = nn.Linear(config.hidden, config.horizon)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (batch, window, features)`` -> ``(batch, horizon)``."""
        out, _ = self._run(x, None)
        return self.head(out[:, -1])


class ManyToMany(Forecaster):
    """Sequence in, sequence out: ``pred[:, t, k]`` forecasts ``x[:, t+1+k, 0]``; stateful across calls."""

    def __init__(self, config: ForecasterConfig):
        super().__init__(config)
        self.encoder_decoder = config.decoder == "encoder-decoder"
        if self.encoder_decoder:
            cell_cls = nn.LSTMCell if config.cell == "lstm" else nn.GRUCell
            self.decoder = cell_cls(1, config.hidden)
            self.head = nn.Linear(config.hidden, 1)
        else:
            self.head = nn.Linear(config.hidden, config.horizon)

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """``x (batch, time, features)`` -> ``(pred (batch, time, horizon), state)``."""
        out, state = self._run(x, state)
        if not self.encoder_decoder:
            return self.head(out), state
        b, t, _ = out.shape
        pred = self._decode(out.reshape(b * t, -1), x[..., 0].reshape(b * t, 1))
        return pred.reshape(b, t, -1), state

    def _decode(self, h: torch.Tensor, y_prev: torch.Tensor) -> torch.Tensor:
        """Unroll the decoder ``horizon`` steps from top hidden ``h (n, hidden)``; returns ``(n, horizon)``."""
        c = torch.zeros_like(h)
        preds = []
        for _ in range(self.config.horizon):
            if self.config.cell == "lstm":
                h, c = self.decoder(y_prev, (h, c))
            else:
                h = self.decoder(y_prev, h)
            y_prev = self.head(h)
            preds.append(y_prev)
        return torch.cat(preds, dim=1)

    @torch.no_grad()
    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One event per series: ``x (batch, features)``, ``state`` -> ``(pred (batch, horizon), state)``.

        Fused cell math on the RNN's own weights (no sequence overhead); equals ``forward`` over the
        whole sequence. Runs without autograd (inference hot path); eval mode assumed (no dropout).
        """
        h_all, c_all = state
        inp = x
        hs, cs = [], []
        for layer in range(self.config.layers):
            w_ih = getattr(self.rnn, f"weight_ih_l{layer}")
            w_hh = getattr(self.rnn, f"weight_hh_l{layer}")
            b_ih = getattr(self.rnn, f"bias_ih_l{layer}")
            b_hh = getattr(self.rnn, f"bias_hh_l{layer}")
            if self.config.cell == "lstm":
                h, c = torch.lstm_cell(inp, (h_all[layer], c_all[layer]), w_ih, w_hh, b_ih, b_hh)
            else:
                h = torch.gru_cell(inp, h_all[layer], w_ih, w_hh, b_ih, b_hh)
                c = c_all[layer]
            hs.append(h)
            cs.append(c)
            inp = h
        pred = self._decode(inp, x[:, :1]) if self.encoder_decoder else self.head(inp)
        return pred, (torch.stack(hs), torch.stack(cs))


def build_forecaster(config: ForecasterConfig) -> Forecaster:
    """Model for ``config.kind`` (fresh weights, train mode, CPU)."""
    return ManyToOne(config) if config.kind == "many-to-one" else ManyToMany(config)
