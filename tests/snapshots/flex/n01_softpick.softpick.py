# n01_softpick.attn:5:53: error: the flex target cannot lower rownorm(g, den = f): FlexAttention's one softmax weighs the values and sums the denominator with the same exp(score_mod), so a separate denominator has no one-call identity
#         normalize rownorm(relu(exp(score) - 1.0), den = abs(exp(score) - 1.0))
#                                                         ^^^^^^^^^^^^^^^^^^^^^
# hint: compile with --target triton or --target reference; where g = f, write rownorm(f)
