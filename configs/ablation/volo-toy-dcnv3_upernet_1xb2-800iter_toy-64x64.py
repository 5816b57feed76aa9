# Token-mixer ablation on the toy data (docs/ablation.md): the quick-start recipe with the
# outlooker stage's mixer set to DCNv3Mixer (InternImage's DCNv3: softmax over K*K deformed
# sampling points per group; K=3, groups C//16). The ablation configs differ only in this line.
_base_ = ['../volo/volo-toy_upernet_1xb2-800iter_toy-64x64.py']

model = dict(backbone=dict(token_mixer=dict(type='DCNv3Mixer', kernel_size=3)))
