"""Models: the joint embedding and its contrastive and DINO training, losses, the ridge and MLP encoders, the
StyleGAN2/LAFITE generator and its training, and the shipped pretrained models."""
