# Token-mixer ablation on the toy data (docs/ablation.md): the quick-start recipe with the
# outlooker stage's mixer set to DeformableOutlook (VOLO's outlook attention with learned
# sampling offsets, zero at init; K=3, stride 2 as the outlook run). The ablation configs
# differ only in this line.
_base_ = ['../volo/volo-toy_upernet_1xb2-800iter_toy-64x64.py']

model = dict(backbone=dict(token_mixer=dict(type='DeformableOutlook', kernel_size=3, stride=2)))
