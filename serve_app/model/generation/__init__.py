"""Running generations: the job types, the runner, samplers, hires fix, inpainting, custom jobs."""
