import os

from django.http import HttpResponse, JsonResponse
from django.urls import path


def index(request):
    return HttpResponse("hello from django")


def client(request):
    return JsonResponse({"pid": os.getpid(),
                         "forwarded_for": request.META.get("HTTP_X_FORWARDED_FOR"),
                         "real_ip": request.META.get("HTTP_X_REAL_IP"),
                         "proto": request.META.get("HTTP_X_FORWARDED_PROTO"),
                         "host": request.get_host(), "method": request.method,
                         "body": request.body.decode()})


urlpatterns = [path("", index), path("client", client)]
