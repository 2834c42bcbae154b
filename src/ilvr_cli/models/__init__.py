"""Networks and checkpoint loading: one UNet for the ADM and Ho et al. DDPM families."""
