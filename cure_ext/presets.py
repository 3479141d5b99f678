"""What the `paper` and `official` presets fix (SPEC §1): the score's sign, the selection policy and β. The
`paper` preset follows the paper's text (Eq. 5), `official` the authors' code."""

PRESETS = {
    "paper": dict(score="abs", select="paper", beta=1.0),
    "official": dict(score="signed", select="official", beta=5.0),
}
