# n02_relu_kept_length.attn:5:42: error: the flex target cannot lower rownorm(g, den = f): FlexAttention's one softmax weighs the values and sums the denominator with the same exp(score_mod), so a separate denominator has no one-call identity
#         normalize rownorm(relu(score), den = 1.0)
#                                              ^^^
# hint: compile with --target triton or --target reference; where g = f, write rownorm(f)
