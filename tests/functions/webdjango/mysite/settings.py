# The least a Django project needs to serve views: no database, no apps beyond the defaults'
# minimum. Behind a gateway every Host is the gateway's to check.
SECRET_KEY = "test-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "mysite.urls"
INSTALLED_APPS = []
MIDDLEWARE = []
DATABASES = {}
USE_TZ = True
