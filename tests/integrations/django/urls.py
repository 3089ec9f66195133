"""URLs of the Django adapter tests (see views.py)."""

from __future__ import annotations

from django.contrib import admin
from django.urls import path

from . import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("charged", views.charged),
    path("priced", views.priced),
    path("recap", views.recap),
    path("other", views.other_ledger),
    path("clocked", views.clocked),
    path("query-account", views.query_account),
    path("nested", views.nested),
    path("work", views.work),
    path("work-outside", views.work_outside),
    path("async/charged", views.acharged),
    path("cbv/dispatch", views.DispatchView.as_view()),
    path("cbv/handler", views.HandlerView.as_view()),
    path("cbv/async-handler", views.AsyncHandlerView.as_view()),
    path("cbv/async-dispatch", views.AsyncDispatchView.as_view()),
]

if views.HAVE_DRF:
    urlpatterns += [
        path("drf/view", views.DrfView.as_view()),
        path("drf/function", views.drf_function),
    ]
