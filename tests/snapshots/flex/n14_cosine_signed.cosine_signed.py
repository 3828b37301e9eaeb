# n14_cosine_signed.attn:8:36: error: the flex target cannot lower rownorm(g, den = f): FlexAttention's one softmax weighs the values and sums the denominator with the same exp(score_mod), so a separate denominator has no one-call identity
#         normalize rownorm(score, den = 1.0)
#                                        ^^^
# hint: compile with --target triton or --target reference; where g = f, write rownorm(f)
