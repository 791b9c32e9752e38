"""Video ViT models (VideoMAE V2 pre-training and classification). No Ray, DeepSpeed or MLflow here.

    model = create_model("vit_b", task="pretrain")          # PretrainModel
    loss = model(video, enc_mask, dec_mask)                  # [B, C, T, H, W], bool [B, N] masks
    clf = create_model("vit_b", task="classify", num_classes=400)
    big = create_model("vit_g", device="meta")               # shapes only, no memory
"""

from pipeline.models.classify import Classifier
from pipeline.models.factory import build, create_model, create_model_from_config
from pipeline.models.hooks import param_groups
from pipeline.models.model_config import ClassifierConfig, FinetuneModelConfig, ModelConfig, PretrainModelConfig
from pipeline.models.pretrain import PretrainModel
from pipeline.models.sizes import ArchSpec, get_spec, list_models

__all__ = ["ArchSpec", "Classifier", "ClassifierConfig", "FinetuneModelConfig", "ModelConfig", "PretrainModel",
           "PretrainModelConfig", "build", "create_model",
           "create_model_from_config", "get_spec", "list_models", "param_groups"]
