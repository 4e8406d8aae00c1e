"""Ship the top-level ``model_card_templates/`` folder inside the package (all other metadata is in pyproject.toml)."""

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithTemplates(build_py):
    def run(self):
        super().run()
        import shutil
        from pathlib import Path

        target = Path(self.build_lib) / "hf_soup" / "model_card_templates"
        target.mkdir(parents=True, exist_ok=True)
        for template in Path("model_card_templates").glob("*"):
            shutil.copy(template, target / template.name)


setup(cmdclass={"build_py": BuildWithTemplates})
