# UperNet + VOLO-D1 on ADE20K with the outlooker stage's mixer swapped for DeformableOutlook
# (outlook attention with learned, zero-initialised sampling offsets; VOLO's K=3, stride 2).
# Everything else is the VOLO-D1 ADE20K recipe. The checkpoint's outlook-attention tensors
# are not loaded into the swapped mixer (VOLO.load_pretrained): the stage starts from init.
_base_ = ['../volo/volo-d1_upernet_8xb2-160k_ade20k-512x512.py']

model = dict(backbone=dict(token_mixer=dict(type='DeformableOutlook', kernel_size=3, stride=2)))
